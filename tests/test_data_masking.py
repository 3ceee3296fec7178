"""The masked-LM rules on synthetic batches, against the rules as the original states them."""

from __future__ import annotations

import numpy as np
import pytest

from bert_jax.data import masking
from bert_jax.data.rng import derive_key

PAD, CLS, SEP, MASK = 0, 1, 2, 3
V = 50  # vocab: 0-3 special, 4-29 whole words, 30-49 "##" pieces


def _rules(**kw) -> masking.MaskingRules:
    cont = np.zeros(V, bool)
    cont[30:] = True
    return masking.MaskingRules(vocab_size=V, mask_id=MASK, never_mask=(CLS, SEP, PAD),
                                is_continuation=cont, **{"max_predictions": 20, **kw})


def _batch(n: int, L: int, seed: int = 0, words_only: bool = False):
    """Random [CLS] A [SEP] B [SEP] rows of random lengths, padded with [PAD]."""
    r = np.random.default_rng(seed)
    ids = np.full((n, L), PAD, np.int32)
    lengths = r.integers(5, L + 1, n)
    for i, length in enumerate(lengths):
        ids[i, :length] = r.integers(4, 30 if words_only else V, length)
        a = r.integers(2, length - 2)
        ids[i, 0], ids[i, a], ids[i, length - 1] = CLS, SEP, SEP
    return ids, lengths


def test_num_to_predict_matches_python_round():
    rules = _rules(max_predictions=20)
    lengths = np.arange(1, 513)
    expected = [min(20, max(1, int(round(n * 0.15)))) for n in range(1, 513)]
    assert masking.num_to_predict(lengths, rules).tolist() == expected
    # Hand-checked: round-half-to-even at 30 * 0.15 = 4.5, and the cap.
    assert masking.num_to_predict(np.array([10, 30, 128, 512]), rules).tolist() == [2, 4, 19, 20]


def test_token_masking_rules_hold_row_by_row():
    ids, lengths = _batch(400, 64)
    rules = _rules()
    m = masking.mask_batch(ids, lengths, derive_key(7, np.arange(len(ids))), rules)
    n = masking.num_to_predict(lengths, rules)
    for i in range(len(ids)):
        k = int(m.weights[i].sum())
        assert k == n[i]  # always reachable without whole words
        pos = m.positions[i, :k]
        assert np.all(np.diff(pos) > 0)  # sorted, distinct
        assert np.all(pos < lengths[i])
        assert not np.isin(ids[i, pos], (CLS, SEP, PAD)).any()
        assert np.array_equal(m.ids[i, :k], ids[i, pos])
        assert not m.positions[i, k:].any() and not m.ids[i, k:].any()
        changed = np.nonzero(m.input_ids[i] != ids[i])[0]
        assert set(changed) <= set(pos)  # only masked positions change
    assert np.array_equal(masking.unmask(m.input_ids, m.positions, m.ids, m.weights), ids)


def test_80_10_10_and_random_words_from_the_whole_vocab():
    ids, lengths = _batch(6000, 128, seed=1)
    m = masking.mask_batch(ids, lengths, derive_key(3, np.arange(len(ids))), _rules())
    rows, slots = np.nonzero(m.weights)
    new = m.input_ids[rows, m.positions[rows, slots]]
    orig = m.ids[rows, slots]
    total = len(new)
    p_same_by_chance = 1 / V  # a random word equal to the original
    shares = {"mask": np.mean(new == MASK), "same": np.mean(new == orig)}
    expected = {"mask": 0.8 + 0.1 / V, "same": 0.1 + 0.1 * p_same_by_chance}
    for key, p in expected.items():
        sigma = np.sqrt(p * (1 - p) / total)
        assert abs(shares[key] - p) < 4 * sigma, (key, shares[key], p)
    # Random replacements are uniform over all V ids, special ones included (chi-square).
    random_words = new[(new != MASK) & (new != orig)]
    counts = np.bincount(random_words, minlength=V)
    # Ids equal to the original or to [MASK] are hidden from this view; compare the rest.
    seen = np.ones(V, bool)
    seen[MASK] = False
    chi2 = np.sum((counts[seen] - counts[seen].mean()) ** 2 / counts[seen].mean())
    assert chi2 < V + 5 * np.sqrt(2 * V)  # chi-square(V-2) mean V-2, sd sqrt(2(V-2))
    assert counts[[PAD, CLS, SEP]].min() > 0


def test_each_candidate_is_equally_likely():
    ids = np.tile(np.arange(4, 24, dtype=np.int32), (20000, 1))  # no specials at all
    lengths = np.full(len(ids), 20)
    m = masking.mask_batch(ids, lengths, derive_key(5, np.arange(len(ids))), _rules())
    hits = np.bincount(m.positions[m.weights > 0], minlength=20)
    p = 3 / 20  # round(20 * 0.15) = 3 of 20 positions per row
    sigma = np.sqrt(len(ids) * p * (1 - p))
    assert np.all(np.abs(hits - len(ids) * p) < 4.5 * sigma)


def test_whole_word_masking_takes_whole_words_greedily():
    ids, lengths = _batch(1500, 64, seed=2)
    rules = _rules(whole_word=True)
    m = masking.mask_batch(ids, lengths, derive_key(9, np.arange(len(ids))), rules)
    n = masking.num_to_predict(lengths, rules)
    cont = rules.is_continuation
    for i in range(len(ids)):
        length = lengths[i]
        # Words by the rule: a ## piece joins the candidate before it.
        words, current = [], None
        for j in range(length):
            if ids[i, j] in (CLS, SEP):
                current = None
                continue
            if current is not None and cont[ids[i, j]]:
                current.append(j)
            else:
                current = [j]
                words.append(current)
        chosen = set(m.positions[i, m.weights[i] > 0].tolist())
        total = len(chosen)
        assert total <= n[i]
        for word in words:
            inside = [j in chosen for j in word]
            assert all(inside) or not any(inside), (i, word)  # never splits a word
            if not any(inside):
                assert total + len(word) > n[i]  # greedy: an unchosen word did not fit
        assert chosen == {j for w in words if w[0] in chosen for j in w}


def test_masks_depend_only_on_the_row_key():
    ids, lengths = _batch(64, 32, seed=4)
    keys = derive_key(11, np.arange(64))
    rules = _rules()
    whole = masking.mask_batch(ids, lengths, keys, rules)
    part = masking.mask_batch(ids[10:20], lengths[10:20], keys[10:20], rules)
    assert np.array_equal(whole.input_ids[10:20], part.input_ids)
    assert np.array_equal(whole.positions[10:20], part.positions)
    other = masking.mask_batch(ids, lengths, derive_key(12, np.arange(64)), rules)
    assert not np.array_equal(whole.positions, other.positions)


@pytest.mark.parametrize("whole_word", [False, True])
def test_no_candidates_masks_nothing(whole_word):
    ids = np.array([[CLS, SEP, SEP, PAD]], np.int32)
    m = masking.mask_batch(ids, np.array([3]), derive_key(1, np.arange(1)),
                           _rules(whole_word=whole_word))
    assert m.weights.sum() == 0 and np.array_equal(m.input_ids, ids)
