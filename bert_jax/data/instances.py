"""One work unit of documents -> pre-training instances (google-research/bert's rules).

For each of `dupe_factor` passes and each document (`create_instances_from_document`):
* the target length is `max_num_tokens` (= max_seq_length - 3, or - 2 without pairs), but
  with probability `short_seq_prob` it is `randint(2, max_num_tokens)` for that document
  (once per document and pass, as in the original);
* sentences are gathered into a chunk until it reaches the target or the document ends;
* with NSP, A is the first `a_end = randint(1, len(chunk) - 1)` sentences of the chunk
  (1 if it has one). With probability 0.5, and always for a one-sentence chunk, B is
  "random next" (label 1): sentences of another document, from a random start, until
  B reaches `target - len(A)` tokens; the document is drawn up to 10 times to avoid the
  current one, and the chunk's unused sentences are put back to start the next chunk.
  Otherwise B is the rest of the chunk (label 0, "is next");
* the pair is truncated to `max_num_tokens` one token at a time from the longer segment
  (B on a tie), each time from its front or back with probability 1/2;
* the layout is `[CLS] A [SEP] B [SEP]` (token types 0 up to the first [SEP], 1 after).
Without pairs (`pair_objective="none"`) a chunk is one segment, `[CLS] chunk [SEP]`,
truncated the same way.

Sentence-order prediction (`pair_objective="sop"`, ALBERT's task) splits the chunk the
same way, and B is always the rest of the chunk: both segments come from one document,
never another. With probability 0.5 the two are swapped (label 1, "swapped"; 0 is "in
order"), then truncated as above. A one-sentence chunk, which NSP (and ALBERT's own
script) pairs with a random document, is instead cut at a random token into A and B;
a one-token chunk cannot be split and makes no instance (counted in
`sop_unsplittable_chunks`). The label lives in `next_sentence_labels`, whose 0 means
"B is A's true continuation" for both tasks.

Differences from the original, all forced by bounded memory and worker-count
independence: the random next document comes from the same work unit (a pool of a few
dozen documents or more, see `documents.work_units`), not the whole corpus; and
instances are shuffled within their shard rather than globally (the loader shuffles
across shards). Every random choice of a pass is seeded by (random_seed, unit, pass),
and the static masks of instance i by (random_seed, unit, i).

Only lengths and offsets are computed per instance in Python (a few scalar steps each);
token copying and masking are numpy operations over the whole unit.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left
from itertools import chain

import numpy as np

from bert_jax.data import masking
from bert_jax.data.rng import Uniforms, derive_key
from bert_jax.errors import UserError

# Domain tags keep the seeds of different uses apart.
PLAN, SHUFFLE, STATIC_MASK, DYNAMIC_MASK = 1, 2, 3, 4
# The sentence-pair task the data is made for (create-data --pair-objective).
PAIR_OBJECTIVES = ("nsp", "sop", "none")


@dataclasses.dataclass(frozen=True)
class InstanceConfig:
    """The knobs of create_pretraining_data, with the original defaults."""

    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    dupe_factor: int = 10
    short_seq_prob: float = 0.1
    random_seed: int = 12345
    whole_word_masking: bool = False
    masking: str = "static"  # or "dynamic": shards keep unmasked tokens
    pair_objective: str = "nsp"  # one of PAIR_OBJECTIVES

    def validate(self) -> None:
        if self.max_seq_length < 5 or self.max_seq_length > 65535:
            raise UserError(f"max_seq_length {self.max_seq_length} must be in [5, 65535]")
        if not 1 <= self.max_predictions_per_seq <= self.max_seq_length:
            raise UserError(f"max_predictions_per_seq {self.max_predictions_per_seq} must be "
                            f"in [1, max_seq_length={self.max_seq_length}]")
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise UserError(f"masked_lm_prob {self.masked_lm_prob} must be in (0, 1)")
        if self.dupe_factor < 1:
            raise UserError(f"dupe_factor {self.dupe_factor} must be at least 1")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise UserError(f"short_seq_prob {self.short_seq_prob} must be in [0, 1]")
        if self.random_seed < 0:
            raise UserError(f"random_seed {self.random_seed} must be non-negative")
        if self.masking not in ("static", "dynamic"):
            raise UserError(f"masking {self.masking!r} must be 'static' or 'dynamic'")
        if self.pair_objective not in PAIR_OBJECTIVES:
            raise UserError(f"pair objective {self.pair_objective!r} must be one of "
                            f"{', '.join(PAIR_OBJECTIVES)}")

    @property
    def paired(self) -> bool:
        """Instances are `[CLS] A [SEP] B [SEP]` pairs (NSP or SOP), not single segments."""
        return self.pair_objective != "none"

    @property
    def max_num_tokens(self) -> int:
        return self.max_seq_length - (3 if self.paired else 2)


def pair_objective_of(metadata: dict) -> str:
    """The pair task a dataset's metadata.json says it was made for (data made before
    `pair_objective` existed records `nsp`, a bool)."""
    if "pair_objective" in metadata:
        return str(metadata["pair_objective"])
    return "nsp" if metadata.get("nsp", True) else "none"


@dataclasses.dataclass
class TokenizedUnit:
    """A unit's documents as token ids: sentence j is tokens[sent_start[j]:sent_start[j+1]],
    document d is sentences doc_first[d] .. doc_first[d+1] - 1."""

    tokens: np.ndarray
    sent_start: list[int]
    doc_first: list[int]

    @property
    def num_documents(self) -> int:
        return len(self.doc_first) - 1


def tokenize_unit(documents: list[list[str]], backend) -> TokenizedUnit:
    """Tokenizes every sentence in one batched call; empty sentences and documents vanish."""
    sentences = list(chain.from_iterable(documents))
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    ids = [e.ids for e in encode(sentences, add_special_tokens=False)]
    sent_start, doc_first = [0], [0]
    kept: list[list[int]] = []
    j = 0
    for doc in documents:
        n_before = len(kept)
        for sentence_ids in ids[j:j + len(doc)]:
            if sentence_ids:
                kept.append(sentence_ids)
                sent_start.append(sent_start[-1] + len(sentence_ids))
        j += len(doc)
        if len(kept) > n_before:
            doc_first.append(len(kept))
    tokens = np.fromiter(chain.from_iterable(kept), np.int32, count=sent_start[-1])
    return TokenizedUnit(tokens, sent_start, doc_first)


_PLAN_FIELDS = ("a_start", "a_len", "b_start", "b_len", "label", "target", "document",
                "random_document", "chunk_sentences")


@dataclasses.dataclass
class Plan:
    """Instances as offsets into `TokenizedUnit.tokens`: one tuple per instance of
    (a_start, a_len, b_start, b_len, label (1 = random next, or swapped for SOP), target
    (the target length used), document, random_document (-1: is next), chunk_sentences)."""

    rows: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
    short_targets: int = 0  # documents (x passes) given a short target
    same_document_random_next: int = 0  # all 10 draws hit the current document
    sop_unsplittable_chunks: int = 0  # one-token chunks SOP cannot split (skipped)

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> np.ndarray:
        table = np.array(self.rows, np.int64).reshape(len(self.rows), len(_PLAN_FIELDS))
        return table[:, _PLAN_FIELDS.index(name)]

    def __getattr__(self, name: str) -> np.ndarray:  # plan.label, plan.a_len, ...
        if name in _PLAN_FIELDS:
            return self.column(name)
        raise AttributeError(name)


def _truncation(la: int, lb: int, max_num: int, u: Uniforms) -> tuple[int, int, int, int]:
    """(front_a, back_a, front_b, back_b) tokens cut to fit `max_num` (see module doc).

    Cutting from the longer segment (B on a tie) one token at a time takes from A first
    while A is strictly longer, then alternates; only the counts matter, and each cut
    is from the front with probability 1/2.
    """
    k = la + lb - max_num
    if k <= 0:
        return 0, 0, 0, 0
    if la > lb:
        first = min(k, la - lb)
        rest = k - first
        na, nb = first + rest // 2, rest - rest // 2
    else:
        first = min(k, lb - la + 1)
        rest = k - first
        na, nb = rest - rest // 2, first + rest // 2
    if k <= 53:  # the usual case: one draw decides every cut
        bits = int(u.u() * 9007199254740992.0)
        fa = (bits & ((1 << na) - 1)).bit_count()
        fb = (bits >> na & ((1 << nb) - 1)).bit_count()
    else:
        fa, fb = _heads(na, u), _heads(nb, u)
    return fa, na - fa, fb, nb - fb


def _heads(n: int, u: Uniforms) -> int:
    """How many of n fair coin flips come up heads, 53 flips per uniform draw (the bits
    of a U[0, 1) double from numpy are 53 independent fair bits; `* 2**53` is exact)."""
    heads = 0
    while n > 0:
        take = min(n, 53)
        heads += (int(u.u() * 9007199254740992.0) & ((1 << take) - 1)).bit_count()
        n -= take
    return heads


def plan_pass(unit: TokenizedUnit, cfg: InstanceConfig, u: Uniforms,
              plan: Plan | None = None) -> Plan:
    """One pass (one dupe) over the unit's documents; appends to and returns `plan`."""
    plan = plan if plan is not None else Plan()
    append = plan.rows.append
    starts, first = unit.sent_start, unit.doc_first
    D = unit.num_documents
    max_num = cfg.max_num_tokens
    short_prob = cfg.short_seq_prob
    for d in range(D):
        s0, s1 = first[d], first[d + 1]
        target = max_num
        if u.u() < short_prob:
            target = u.randint(2, max_num)
            plan.short_targets += 1
        chunk = s0  # first sentence of the current chunk
        i = s0
        while i < s1:
            if i < s1 - 1 and starts[i + 1] - starts[chunk] < target:
                i += 1
                continue
            # The chunk is sentences chunk..i.
            k = i - chunk + 1
            if not cfg.paired:
                lo, n = starts[chunk], starts[i + 1] - starts[chunk]
                fa, ba, _, _ = _truncation(n, 0, max_num, u)
                append((lo + fa, n - fa - ba, 0, 0, 0, target, d, -1, k))
                chunk = i = i + 1
                continue
            if cfg.pair_objective == "sop":
                _plan_sop(plan, starts, chunk, i, max_num, (target, d, k), u)
                chunk = i = i + 1
                continue
            a_end = 1 if k < 2 else u.randint(1, k - 1)
            a_lo = starts[chunk]
            la = starts[chunk + a_end] - a_lo
            if k == 1 or u.u() < 0.5:
                label = 1
                r = d
                for _ in range(10):
                    r = int(u.u() * D)
                    if r != d:
                        break
                if r == d:
                    plan.same_document_random_next += 1
                r0, r1 = first[r], first[r + 1]
                j = r0 + int(u.u() * (r1 - r0))
                b_lo = starts[j]
                # Sentences j, j+1, ... until B has target - len(A) tokens (at least one).
                m = bisect_left(starts, b_lo + target - la, j + 1, r1)
                lb = starts[m] - b_lo
                i = chunk + a_end - 1  # put the unused sentences back
            else:
                label, r = 0, -1
                b_lo = starts[chunk + a_end]
                lb = starts[i + 1] - b_lo
            fa, ba, fb, bb = _truncation(la, lb, max_num, u)
            append((a_lo + fa, la - fa - ba, b_lo + fb, lb - fb - bb, label, target, d, r, k))
            chunk = i = i + 1
    return plan


def _plan_sop(plan: Plan, starts: list[int], chunk: int, last: int, max_num: int,
              info: tuple[int, int, int], u: Uniforms) -> None:
    """One SOP instance from sentences chunk..last of one document (see the module doc)."""
    a_lo, n = starts[chunk], starts[last + 1] - starts[chunk]
    if last > chunk:  # A: the first randint(1, k - 1) sentences
        la = starts[chunk + u.randint(1, last - chunk)] - a_lo
    elif n >= 2:  # one sentence: cut it at a random token
        la = u.randint(1, n - 1)
    else:
        plan.sop_unsplittable_chunks += 1
        return
    b_lo, lb, label = a_lo + la, n - la, 0
    if u.u() < 0.5:
        a_lo, la, b_lo, lb, label = b_lo, lb, a_lo, la, 1
    fa, ba, fb, bb = _truncation(la, lb, max_num, u)
    target, d, k = info
    plan.rows.append((a_lo + fa, la - fa - ba, b_lo + fb, lb - fb - bb, label, target, d, -1, k))


def build_sequences(unit: TokenizedUnit, plan: Plan, cfg: InstanceConfig, cls_id: int,
                    sep_id: int, pad_id: int, dtype=np.uint16) -> dict[str, np.ndarray]:
    """The unmasked sequences of a plan: input_ids [N, L], lengths [N] (all real tokens),
    a_lengths [N] (the tokens of `[CLS] A [SEP]`), next_sentence_labels [N]."""
    N, L = len(plan), cfg.max_seq_length
    table = np.array(plan.rows, np.int64).reshape(N, len(_PLAN_FIELDS))
    a_start, la, b_start, lb = (table[:, i:i + 1] for i in range(4))
    pos = np.arange(L)[None, :]
    a_part = la + 2  # [CLS] A [SEP]
    length = a_part + (lb + 1 if cfg.paired else 0)
    # One gather for all positions: A's token, else B's, else a placeholder.
    src = np.where(pos <= la, a_start + pos - 1, b_start + pos - a_part)
    np.clip(src, 0, max(len(unit.tokens) - 1, 0), out=src)
    tokens = unit.tokens if len(unit.tokens) else np.zeros(1, np.int32)
    ids = tokens[src]
    ids[pos >= length] = pad_id
    rows = np.arange(N)
    ids[:, 0] = cls_id
    ids[rows, a_part[:, 0] - 1] = sep_id
    if cfg.paired:
        ids[rows, length[:, 0] - 1] = sep_id
    plan_label = table[:, 4]
    return {
        "input_ids": ids.astype(dtype),
        "lengths": length[:, 0].astype(np.uint16),
        "a_lengths": a_part[:, 0].astype(np.uint16),
        "next_sentence_labels": plan_label.astype(np.uint8),
    }


def unit_instances(unit: TokenizedUnit, unit_index: int, cfg: InstanceConfig,
                   rules: masking.MaskingRules, special: tuple[int, int, int],
                   dtype=np.uint16) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """All passes over one unit: the shard's arrays (shuffled) and its counts.

    `special` is (cls_id, sep_id, pad_id). Static masking adds masked_lm_positions and
    masked_lm_ids ([N, P], 0 where padded) and masks input_ids.
    """
    plan = Plan()
    if unit.num_documents:
        for dupe in range(cfg.dupe_factor):
            plan_pass(unit, cfg, Uniforms(cfg.random_seed, PLAN, unit_index, dupe), plan)
    arrays = build_sequences(unit, plan, cfg, *special, dtype=dtype)
    N = len(plan)
    order = Uniforms(cfg.random_seed, SHUFFLE, unit_index).permutation(N)
    arrays = {k: v[order] for k, v in arrays.items()}
    if cfg.masking == "static":
        keys = derive_key(cfg.random_seed, STATIC_MASK, unit_index, np.arange(N))
        m = masking.mask_batch(arrays["input_ids"], arrays["lengths"], keys, rules)
        arrays["input_ids"] = m.input_ids
        arrays["masked_lm_positions"] = m.positions.astype(np.uint16)
        arrays["masked_lm_ids"] = m.ids.astype(dtype)
    labels = arrays["next_sentence_labels"]
    counts = {
        "instances": N,
        "documents_with_tokens": unit.num_documents,
        "tokens": int(unit.sent_start[-1]),
        # label 1: a random next (NSP) or a swapped pair (SOP)
        "swapped_order" if cfg.pair_objective == "sop" else "random_next": int(labels.sum()),
        "short_target_passes": plan.short_targets,
        "same_document_random_next": plan.same_document_random_next,
        "real_tokens": int(arrays["lengths"].astype(np.int64).sum()),
    }
    if cfg.pair_objective == "sop":
        counts["sop_unsplittable_chunks"] = plan.sop_unsplittable_chunks
    return arrays, counts
