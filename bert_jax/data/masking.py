"""The masked-LM rules of BERT, vectorised over a batch; shared by static and dynamic masking.

For each sequence (as google-research/bert's `create_masked_lm_predictions`):
1. candidates are all positions inside the sequence except [CLS], [SEP] (and [PAD]);
   with whole-word masking a `##` piece joins the word before it, so a word is one
   candidate group;
2. `num_to_predict = min(max_predictions, max(1, round(length * masked_lm_prob)))`,
   with `length` counting [CLS]/[SEP] and Python's round-half-to-even;
3. the groups are taken in random order, each added whole if it still fits
   (a group that would overshoot `num_to_predict` is skipped), until the count is reached;
4. each chosen position becomes [MASK] with probability 0.8, else stays itself with
   probability 0.5, else becomes a token drawn uniformly from the whole vocab;
5. the predictions are listed in position order.

One deliberate difference from the original: a `##` piece that opens segment B (left
there by front truncation) starts its own group instead of joining the last word of A
across [SEP].

The randomness of row i comes only from `keys[i]` (see `rng.hash_uniform`), so a row's
masks are the same whichever batch it is in and however often the loader restarts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bert_jax.data.rng import hash_bits, hash_uniform

# Counter streams of hash_uniform: counter = position * _STREAMS + stream.
_ORDER, _ACTION, _KEEP, _WORD = range(4)
_STREAMS = 4


@dataclasses.dataclass(frozen=True)
class MaskingRules:
    """What `mask_batch` needs to know about the vocab and the recipe."""

    vocab_size: int
    mask_id: int
    never_mask: tuple[int, ...]  # [CLS], [SEP], [PAD]
    max_predictions: int
    masked_lm_prob: float = 0.15
    whole_word: bool = False
    is_continuation: np.ndarray | None = None  # bool[vocab_size]: the token starts with ##


@dataclasses.dataclass
class Masked:
    input_ids: np.ndarray  # [N, L], the masked sequences (same dtype as the input)
    positions: np.ndarray  # [N, P] int32, 0 where padded
    ids: np.ndarray  # [N, P] int32, the original tokens; 0 where padded
    weights: np.ndarray  # [N, P] float32, 1.0 for a real prediction


def num_to_predict(lengths: np.ndarray, rules: MaskingRules) -> np.ndarray:
    """How many positions each sequence masks (rule 2)."""
    n = np.round(np.asarray(lengths, np.float64) * rules.masked_lm_prob).astype(np.int64)
    return np.minimum(rules.max_predictions, np.maximum(1, n))


def candidates(input_ids: np.ndarray, lengths: np.ndarray, rules: MaskingRules) -> np.ndarray:
    """bool [N, L]: positions that may be masked."""
    inside = np.arange(input_ids.shape[1])[None, :] < np.asarray(lengths)[:, None]
    return inside & ~np.isin(input_ids, rules.never_mask)


def word_starts(input_ids: np.ndarray, cand: np.ndarray, rules: MaskingRules) -> np.ndarray:
    """bool [N, L]: candidates that open a new group (every candidate without whole-word
    masking; with it, those that are not a `##` piece right after another candidate)."""
    if not rules.whole_word:
        return cand
    if rules.is_continuation is None:
        raise ValueError("whole-word masking needs MaskingRules.is_continuation")
    cont = rules.is_continuation[input_ids]
    prev_cand = np.zeros_like(cand)
    prev_cand[:, 1:] = cand[:, :-1]
    return cand & ~(cont & prev_cand)


def _select_tokens(order_bits: np.ndarray, cand: np.ndarray, n: np.ndarray,
                   max_n: int) -> np.ndarray:
    """Without whole words: the n[i] candidates of row i with the smallest random keys.

    A partial sort finds each row's n-th smallest key (n <= max_n); the chosen are the
    candidates at or below it (64-bit keys: ties have probability ~2**-64).
    """
    keys = np.where(cand, order_bits, np.uint64(np.iinfo(np.uint64).max))
    L = keys.shape[1]
    if max_n < L:
        smallest = np.sort(np.partition(keys, max_n - 1, axis=1)[:, :max_n], axis=1)
    else:
        smallest = np.sort(keys, axis=1)
    rows = np.arange(len(keys))
    threshold = smallest[rows, np.clip(n - 1, 0, smallest.shape[1] - 1)]
    return cand & (keys <= threshold[:, None]) & (n[:, None] > 0)


def _select_words(order_bits: np.ndarray, cand: np.ndarray, starts: np.ndarray,
                  n: np.ndarray) -> np.ndarray:
    """With whole words: groups in random order, each taken whole if it still fits.

    A group is keyed by the random bits of its first piece and lives at its first
    position (arrays stay [N, L]). The greedy scan is sequential,
    but all of it except a short tail is a prefix sum: every group up to the first one
    that overshoots `n` fits, so those are taken at once. Past that group a row lacks
    `d = n - total` positions (fewer than that group's size); each further round takes,
    in every row still short, the next group in order of size <= d, the one the scan
    would reach next. A round fills at least one position or ends the row, so there
    are fewer rounds than the longest word has pieces.
    """
    N, L = cand.shape
    flat_starts = starts.ravel()
    # global group id of each position (valid on cand)
    group = np.cumsum(flat_starts, dtype=np.int32) - 1
    if group[-1] < 0:
        return np.zeros_like(cand)
    size_at = np.zeros(N * L, np.int32)  # each group's size, at its first position
    size_at[flat_starts] = np.bincount(group[cand.ravel()], minlength=int(group[-1]) + 1)
    # Groups in key order: a value sort of (key, position) packed in 64 bits (the key's
    # top bits above the position's), faster than an argsort. Keys that agree in all
    # their kept bits (probability ~2**-50 per pair) fall back to position order, as the
    # stable sort of the full keys would for equal keys. Non-starts get the top bit and
    # sort last.
    shift = np.uint64(max(1, (L - 1).bit_length()))
    low = (np.uint64(1) << shift) - np.uint64(1)
    top = np.uint64(1 << 63)
    packed = np.where(starts, (order_bits >> np.uint64(1)) & ~low, top)
    packed |= np.arange(L, dtype=np.uint64)[None, :]
    size_at = size_at.reshape(N, L)
    # Every group holds a position, so the prefix and the group that overshoots it are
    # among the first max(n) + 1: only those are sorted (after a linear-time partition).
    k = min(L, int(n.max(initial=0)) + 1)
    head = np.sort(np.partition(packed, k - 1, axis=1)[:, :k] if k < L else packed, axis=1)
    order = (head & low).astype(np.intp)
    sizes = size_at[np.arange(N)[:, None], order]

    # The prefix: groups whose running total stays within n.
    taken_sorted = (np.cumsum(sizes, axis=1) <= n[:, None]) & (sizes > 0)
    overshoot = np.argmin(taken_sorted | (sizes == 0), axis=1)  # first group not taken
    total = np.where(taken_sorted, sizes, 0).sum(axis=1)
    rows, cols = np.nonzero(taken_sorted)
    chosen_rows, chosen_starts = [rows], [order[rows, cols]]
    # The tail: rows still short scan on (in their full order) from the first group that
    # did not fit.
    short_rows = np.nonzero((total < n) & (sizes[np.arange(N), overshoot] > 0))[0]
    if len(short_rows):
        full = (np.sort(packed[short_rows], axis=1) & low).astype(np.intp)
        full_sizes = size_at[short_rows[:, None], full]
        active = np.arange(len(short_rows))
        after, deficit = overshoot[short_rows], (n - total)[short_rows]
        columns = np.arange(L)[None, :]
        while len(active):
            s = full_sizes[active]
            fits = (s > 0) & (s <= deficit[:, None]) & (columns > after[:, None])
            found = fits.any(axis=1)
            active, after = active[found], np.argmax(fits, axis=1)[found]
            chosen_rows.append(short_rows[active])
            chosen_starts.append(full[active, after])
            deficit = deficit[found] - full_sizes[active, after]
            short = deficit > 0
            active, after, deficit = active[short], after[short], deficit[short]
    taken = np.zeros((N, L), bool)
    taken[np.concatenate(chosen_rows), np.concatenate(chosen_starts)] = True
    # A position is chosen when its group's first position is.
    return (cand.ravel() & taken.ravel()[flat_starts][group]).reshape(N, L)


def mask_batch(input_ids: np.ndarray, lengths: np.ndarray, keys: np.ndarray,
               rules: MaskingRules) -> Masked:
    """Applies the masked-LM rules to each row of `input_ids` ([N, L], unmasked).

    `lengths[i]` is the number of real tokens of row i ([CLS] and [SEP]s included);
    `keys[i]` (uint64) seeds row i's randomness.
    """
    N, L = input_ids.shape
    P = rules.max_predictions
    lengths = np.asarray(lengths)
    keys = np.asarray(keys, np.uint64)[:, None]
    counters = np.arange(L, dtype=np.uint64)[None, :] * np.uint64(_STREAMS)
    cand = candidates(input_ids, lengths, rules)
    n = num_to_predict(lengths, rules)
    order_bits = hash_bits(keys, counters + np.uint64(_ORDER))
    if rules.whole_word:
        chosen = _select_words(order_bits, cand, word_starts(input_ids, cand, rules), n)
    else:
        chosen = _select_tokens(order_bits, cand, n, P)

    rows, cols = np.nonzero(chosen)  # row-major: positions ascending within a row
    first = np.searchsorted(rows, np.arange(N))
    slot = np.arange(len(rows)) - first[rows]
    positions = np.zeros((N, P), np.int32)
    ids = np.zeros((N, P), np.int32)
    weights = np.zeros((N, P), np.float32)
    positions[rows, slot] = cols
    original = input_ids[rows, cols]
    ids[rows, slot] = original
    weights[rows, slot] = 1.0

    # 80% [MASK], 10% unchanged, 10% a random token of the whole vocab.
    c = cols.astype(np.uint64) * np.uint64(_STREAMS)
    k = keys[rows, 0]
    action = hash_uniform(k, c + np.uint64(_ACTION))
    keep = hash_uniform(k, c + np.uint64(_KEEP))
    word = (hash_uniform(k, c + np.uint64(_WORD)) * rules.vocab_size).astype(np.int64)
    replacement = np.where(action < 0.8, rules.mask_id, np.where(keep < 0.5, original, word))
    masked = input_ids.copy()
    masked[rows, cols] = replacement.astype(input_ids.dtype)
    return Masked(masked, positions, ids, weights)


def unmask(input_ids: np.ndarray, positions: np.ndarray, ids: np.ndarray,
           weights: np.ndarray) -> np.ndarray:
    """The original sequences back from statically masked ones (for re-masking)."""
    out = input_ids.copy()
    rows, slots = np.nonzero(weights > 0)
    out[rows, positions[rows, slots]] = ids[rows, slots].astype(out.dtype)
    return out
