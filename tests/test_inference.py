"""Inference engine: results equal an unbatched, unpadded reference; buckets bound compiles.

The reference for every task is transformers' PyTorch BertForPreTraining with the same
weights, run on one text at its own length (no padding, no bucket, every position
projected onto the vocabulary), softmax and top-k in float64. NSP's class order is
checked against BertForNextSentencePrediction, mean pooling on released MiniLM weights.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import minilm_dir, require

from bert_jax import model as modeling
from bert_jax.config import preset
from bert_jax.errors import UserError
from bert_jax.inference import Buckets, Predictor, TruncationWarning, infer_head
from bert_jax.tokenizer import Tokenizer

CFG = preset("tiny")  # vocab 128, 2 layers, 4 heads, 64 positions
WORDS = [f"w{i}" for i in range(CFG.vocab_size - 5)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return Tokenizer.from_vocab(path)


@pytest.fixture(scope="module")
def params():
    # A larger init spread than the default gives peaked, well-separated MLM scores.
    module = modeling.build(CFG.replace(initializer_range=0.3), "pretraining")
    full = jax.jit(lambda key: modeling.init_params(module, key))(jax.random.key(1))
    # The other heads' trees are sub-trees of this one.
    mlm = {k: v for k, v in full.items() if k != "cls_seq_relationship"}
    return {"pretraining": full, "mlm": mlm, "encoder": full["bert"]}


@pytest.fixture(scope="module")
def predictor(params, tokenizer):
    return Predictor(CFG, params["pretraining"], tokenizer)


@pytest.fixture(scope="module")
def hf_dir(params, tmp_path_factory):
    """transformers' BertForPreTraining holding the same weights, saved to a directory."""
    require("torch")
    require("transformers")
    from bert_jax import weights

    directory = tmp_path_factory.mktemp("hf")
    weights.save_pretrained(directory, CFG, params["pretraining"], head="pretraining")
    return directory


@pytest.fixture(scope="module")
def reference(hf_dir, tokenizer):
    """One unpadded forward of transformers' model per text (or pair), at its own length,
    every position projected: (encoding, hidden states, attentions, MLM probs, NSP probs)."""
    import torch
    import transformers

    hf = transformers.BertForPreTraining.from_pretrained(
        hf_dir, attn_implementation="eager").eval()  # eager: it returns the attentions

    def run(t, pair=None):
        enc = tokenizer.encode(t, pair)
        with torch.inference_mode():
            out = hf(input_ids=torch.tensor([enc.ids]), token_type_ids=torch.tensor([enc.type_ids]),
                     output_hidden_states=True, output_attentions=True)
        hidden = [h[0].numpy() for h in out.hidden_states]
        attentions = np.stack([a[0].numpy() for a in out.attentions])
        mlm = torch.softmax(out.prediction_logits[0].double(), -1).numpy()
        nsp = torch.softmax(out.seq_relationship_logits[0].double(), -1).numpy()
        return enc, hidden, attentions, mlm, nsp

    return run


def text(n: int, masks: tuple[int, ...] = (), seed: int = 0) -> str:
    """n words, [MASK] at the given word indices."""
    rng = np.random.default_rng(seed + n)
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), n)]
    for m in masks:
        words[m] = "[MASK]"
    return " ".join(words)


# ---- fill-mask --------------------------------------------------------------------------

def test_fill_mask_equals_unpadded_reference(predictor, reference, tokenizer):
    texts = [text(5, (2,)), text(20, (0, 7, 19)), text(3, (1,))]
    got = predictor.fill_mask(texts, top_k=4)
    for t, per_text in zip(texts, got):
        enc, _, _, probs, _ = reference(t)
        positions = [i for i, tok in enumerate(enc.ids) if tok == tokenizer.mask_id]
        assert len(per_text) == len(positions)
        for pos, top in zip(positions, per_text):
            order = np.argsort(-probs[pos])[:4]
            assert [r["token_id"] for r in top] == order.tolist()
            np.testing.assert_allclose([r["score"] for r in top], probs[pos][order], atol=1e-5)
            assert [r["token_str"] for r in top] == [tokenizer.id_to_token(i) for i in order]


def test_several_masks_are_one_forward_and_batches_share_compiles(params, tokenizer):
    pred = Predictor(CFG, params["pretraining"], tokenizer)
    pred.fill_mask([text(6, (0, 2, 4))])
    pred.fill_mask([text(9, (1, 3, 5, 8))])  # same length and mask buckets: no new compile
    assert pred.traces["fill_mask"] == 1


def test_mlm_only_head_fills_masks_but_has_no_nsp(params, tokenizer):
    pred = Predictor(CFG, params["mlm"], tokenizer)
    assert pred.head == "mlm"
    assert len(pred.fill_mask([text(4, (1,))], top_k=2)[0][0]) == 2
    with pytest.raises(UserError, match="nsp needs"):
        pred.nsp([("w1", "w2")])
    with pytest.raises(UserError, match="fill-mask needs"):
        Predictor(CFG, params["encoder"], tokenizer).fill_mask([text(4, (1,))])


@pytest.mark.parametrize("bad, message", [
    ([], "no input"),
    (["w1 w2 w3"], "no \\[MASK\\]"),
    (["w1 [MASK]", "  "], "text 2 is empty"),
])
def test_fill_mask_bad_input_is_a_user_error(predictor, bad, message):
    with pytest.raises(UserError, match=message):
        predictor.fill_mask(bad)


def test_too_long_text_truncates_with_warning_or_raises_when_strict(predictor, params,
                                                                    tokenizer):
    long = text(80, (3,))  # 82 tokens with [CLS]/[SEP], the model takes 64
    with pytest.warns(TruncationWarning, match="82 tokens"):
        got = predictor.fill_mask([long], top_k=3)
    # The same as the text cut by hand to 62 words + [CLS]/[SEP].
    cut = " ".join(long.split()[:62])
    assert got == predictor.fill_mask([cut], top_k=3)
    with pytest.raises(UserError, match="more than the model's 64"):
        predictor.fill_mask([long], strict=True)
    with pytest.raises(UserError, match="beyond the model's 64"), \
            pytest.warns(TruncationWarning):
        predictor.fill_mask([text(80, (70,))])


# ---- buckets and compilations -----------------------------------------------------------

def test_bucket_rules_by_hand():
    b = Buckets().for_model(64)
    assert b.lengths == (16, 32, 64)
    assert Buckets().for_model(40).lengths == (16, 32, 40)
    assert Buckets().for_model(512).lengths == (16, 32, 64, 128, 256, 512)
    assert [b.length(n) for n in (1, 16, 17, 33, 64)] == [16, 16, 32, 64, 64]
    assert list(b.chunks(1)) == [(1, 1)]
    assert list(b.chunks(7)) == [(7, 8)]
    assert list(b.chunks(10)) == [(8, 8), (1, 1), (1, 1)]
    assert list(b.chunks(20)) == [(20, 32)]
    assert list(b.chunks(70)) == [(32, 32), (32, 32), (6, 8)]
    assert b.mask_slots(1, 16) == 8 and b.mask_slots(8, 32) == 8
    assert b.mask_slots(9, 32) == 32  # more [MASK]s than slots: every position
    assert b.max_compilations("fill_mask") == 3 * 3 * 2
    assert b.pack_row_length(10) == 64  # pack_length 128, capped at the model's 64
    wide = Buckets().for_model(512)
    assert [wide.pack_row_length(n) for n in (10, 128, 129)] == [128, 128, 256]
    assert [b.example_slots(n) for n in (1, 8, 9, 32)] == [8, 8, 32, 32]
    assert b.max_compilations("embed", packing=True) == 3 * 3 * 2
    assert b.max_compilations("fill_mask", packing=True) == 3 * 3 * 2 * 2
    capped = Buckets(max_tokens=2048)
    assert list(capped.chunks(20, length=128)) == [(8, 8), (8, 8), (4, 8)]  # 32 x 128 > 2048
    assert list(capped.chunks(20, length=64)) == [(20, 32)]
    assert list(capped.chunks(3, length=4096)) == [(1, 1)] * 3  # the smallest always fits


@pytest.mark.slow
def test_many_texts_of_many_lengths_compile_a_bounded_known_number(params, tokenizer):
    pred = Predictor(CFG, params["pretraining"], tokenizer)
    rng = np.random.default_rng(0)

    def workload(seed):
        for size in (1, 3, 8, 10, 33, 5):
            lengths = rng.integers(1, 29, size)  # two length buckets keep it quick
            masks = [tuple(range(min(n, 12 if i % 4 == 0 else 1))) for i, n in enumerate(lengths)]
            yield [text(int(n), m, seed) for n, m in zip(lengths, masks)]

    for texts in workload(0):
        pred.fill_mask(texts, top_k=3)
    first = pred.traces["fill_mask"]
    # 2 length buckets x 3 batch sizes x 2 mask-slot counts (the bound for all 3 is 18).
    assert 1 < first <= 2 * 3 * 2 < pred.buckets.max_compilations("fill_mask") == 18
    for texts in workload(1):  # new texts, the same spread of shapes: nothing new compiles
        pred.fill_mask(texts, top_k=3)
    assert pred.traces["fill_mask"] == first


# ---- embeddings, NSP, attention ---------------------------------------------------------

@pytest.mark.slow
def test_embed_every_layer_and_pooling_equals_reference(predictor, reference):
    texts = [text(5), text(12), text(3)]  # one length bucket: one compile per option
    for layer, poolings in ((0, ["tokens"]), (1, ["tokens"]), (-1, ["tokens", "cls", "mean"])):
        got = {p: predictor.embed(texts, layer=layer, pooling=p) for p in poolings}
        for i, t in enumerate(texts):
            enc, hidden, _, _, _ = reference(t)
            h = hidden[layer]  # hidden[0] is the embeddings output, as in transformers
            assert got["tokens"][i].shape == (len(enc.ids), CFG.hidden_size)
            np.testing.assert_allclose(got["tokens"][i], h, atol=1e-5)
            if layer == -1:
                np.testing.assert_allclose(got["cls"][i], h[0], atol=1e-5)
                np.testing.assert_allclose(got["mean"][i], h.mean(0), atol=1e-5)
    assert got["cls"].shape == got["mean"].shape == (3, CFG.hidden_size)


def test_embed_bad_layer_or_pooling(predictor):
    with pytest.raises(UserError, match="layer 3 does not exist"):
        predictor.embed(["w1"], layer=3)
    with pytest.raises(UserError, match="unknown pooling"):
        predictor.embed(["w1"], pooling="max")


@pytest.mark.slow
def test_nsp_and_attention_equal_reference(predictor, reference):
    pairs = [(text(2), text(2)), (text(12), text(7))]
    got = predictor.nsp(pairs)
    for (a, b), p in zip(pairs, got):
        nsp = reference(a, b)[-1]
        assert p == pytest.approx(nsp[0], abs=1e-6)

    probs, tokens = predictor.attention(text(2), text(2))
    enc, _, attentions, _, _ = reference(text(2), text(2))
    assert tokens == enc.tokens and tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2
    assert probs.shape == (CFG.num_hidden_layers, CFG.num_attention_heads, 7, 7)
    np.testing.assert_allclose(probs, attentions, atol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_nsp_index_0_is_is_next_as_in_transformers(predictor, hf_dir, tokenizer):
    """BertForNextSentencePrediction's docs: label 0 = B continues A. Same weights, same P."""
    import torch
    import transformers

    nsp_model = transformers.BertForNextSentencePrediction.from_pretrained(hf_dir).eval()
    pairs = [(text(5), text(7)), (text(12), text(2)), (text(3), text(3, seed=5))]
    enc = tokenizer.encode_batch([a for a, _ in pairs], [b for _, b in pairs])
    with torch.inference_mode():
        logits = nsp_model(**{k: torch.from_numpy(v).long() for k, v in enc.items()}).logits
    expected = torch.softmax(logits.double(), -1)[:, 0].numpy()
    assert np.ptp(expected) > 1e-3  # the pairs really differ
    np.testing.assert_allclose(predictor.nsp(pairs), expected, atol=1e-5)


def test_mean_pooling_on_released_minilm_equals_transformers():
    """Real weights: mean-pooled last layer = sentence-transformers' recipe in torch."""
    require("torch")
    transformers = require("transformers")
    import torch

    from bert_jax import weights

    directory = minilm_dir()
    loaded = weights.load_pretrained(directory, head="encoder")
    pred = Predictor(loaded.config, loaded.params, loaded.tokenizer)
    texts = ["A man is playing a guitar.", "The new movie is awesome!",
             "Short.", "The quick brown fox jumps over the lazy dog near the river bank."]
    got = pred.embed(texts, pooling="mean")
    hf = transformers.BertModel.from_pretrained(directory).eval()
    enc = loaded.tokenizer.encode_batch(texts)
    mask = torch.from_numpy(enc["attention_mask"]).float()[..., None]
    with torch.inference_mode():
        h = hf(**{k: torch.from_numpy(v).long() for k, v in enc.items()}).last_hidden_state
    expected = ((h * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    unit = got / np.linalg.norm(got, axis=1, keepdims=True)
    assert (unit @ unit.T)[0, 1] < 0.5  # unrelated sentences are not near-duplicates


# ---- dtypes -----------------------------------------------------------------------------

@pytest.mark.slow
def test_bfloat16_compute_is_close_to_float32(predictor, params, tokenizer):
    bf16 = Predictor(CFG, params["pretraining"], tokenizer, dtype="bfloat16")
    assert bf16.config.dtype == "bfloat16" and predictor.config.dtype == "float32"
    texts = [text(5, (2,))]
    (full,), (half,) = predictor.fill_mask(texts, top_k=3), bf16.fill_mask(texts, top_k=3)
    scores = [[r["score"] for r in top] for top in (full[0], half[0])]
    assert all(isinstance(x, float) for x in scores[1])
    np.testing.assert_allclose(scores[1], scores[0], atol=0.02)


def test_infer_head(params):
    assert [infer_head(params[h]) for h in ("pretraining", "mlm", "encoder")] == [
        "pretraining", "mlm", "encoder"]


# ---- packing ----------------------------------------------------------------------------

def packed_texts(seed: int = 0) -> list[str]:
    """17 texts of 1..20 words (3..22 tokens), each with [MASK]s: several fit a row of 64."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 21, 17)
    return [text(int(n), tuple(sorted({0, int(n) - 1, int(n) // 2})), seed + i)
            for i, n in enumerate(lengths)]


def test_packed_rows_hold_several_texts(predictor):
    encoded = predictor._encode(packed_texts(), None, strict=True)
    batches = list(predictor._batches(encoded, packed=True))
    rows = [row for members, _ in batches for row in members if row]
    assert sorted(m.example for row in rows for m in row) == list(range(17))
    assert len(rows) < 17 / 2
    for members, batch in batches:
        assert batch["input_ids"].shape[1] == 64  # pack_length 128, cut to the model's 64
        for row, examples in zip(batch["segment_ids"], members):
            for m in examples:
                n = len(encoded[m.example].ids)
                assert (row[m.start:m.start + n] == m.slot + 1).all()


@pytest.mark.slow
def test_packed_embed_equals_unpacked_every_pooling(predictor):
    texts = [t.replace("[MASK]", "w7") for t in packed_texts(1)]
    for layer, pooling in ((-1, "cls"), (-1, "mean"), (1, "mean"), (-1, "tokens")):
        want = predictor.embed(texts, layer=layer, pooling=pooling)
        got = predictor.embed(texts, layer=layer, pooling=pooling, packing=True)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def test_packed_nsp_equals_unpacked(predictor):
    texts = [t.replace("[MASK]", "w9") for t in packed_texts(2)]
    pairs = list(zip(texts, texts[1:] + texts[:1]))
    want = predictor.nsp(pairs)
    assert np.ptp(want) > 1e-3  # the pairs really differ
    np.testing.assert_allclose(predictor.nsp(pairs, packing=True), want, atol=1e-5)


def test_packed_fill_mask_equals_unpacked(predictor):
    texts = packed_texts(3)
    want = predictor.fill_mask(texts, top_k=3)
    got = predictor.fill_mask(texts, top_k=3, packing=True)
    for g, w in zip(got, want):
        assert len(g) == len(w) >= 1
        for gm, wm in zip(g, w):
            assert [r["token_id"] for r in gm] == [r["token_id"] for r in wm]
            np.testing.assert_allclose([r["score"] for r in gm], [r["score"] for r in wm],
                                       atol=1e-5)
