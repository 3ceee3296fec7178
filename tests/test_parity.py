"""bert-jax against transformers' PyTorch BERT: the same weights give the same numbers.

Real released weights (all-MiniLM-L6-v2) check every layer's hidden states and attention
maps; randomly initialised `BertForPreTraining` models (tiny and bert-base-cased shape),
saved in every naming style a loader meets, check the MLM and NSP heads.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import minilm_dir, require, shared_file

from bert_jax import weights
from bert_jax.model import build

TOL = 1e-4


def wikitext_sentences(n: int = 6) -> list[str]:
    """The first sentence of the first `n` paragraphs of WikiText-2 valid (not headings)."""
    lines = shared_file("corpus", "wikitext-2-raw", "valid.txt").read_text(encoding="utf-8")
    paragraphs = [s.strip() for s in lines.splitlines() if s.strip() and not s.strip()[0] == "="]
    return [p.split(" . ")[0] + " ." for p in paragraphs[:n]]


def torch_batch(batch: dict[str, np.ndarray]):
    torch = require("torch")
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


@pytest.mark.slow
def test_released_minilm_every_layer_matches_transformers():
    torch = require("torch")
    transformers = require("transformers")
    d = minilm_dir()
    loaded = weights.load_pretrained(d, head="encoder")
    assert loaded.report.initialized == [] and loaded.report.ignored == []
    batch = loaded.tokenizer.encode_batch(wikitext_sentences(), max_length=64)
    assert batch["attention_mask"].min() == 0  # really a padded batch
    ours = loaded.model.apply({"params": loaded.params}, batch["input_ids"],
                              batch["attention_mask"], batch["token_type_ids"],
                              output_hidden_states=True, output_attentions=True)

    ref = transformers.BertModel.from_pretrained(d, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = ref(**torch_batch(batch), output_hidden_states=True, output_attentions=True)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 7
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=TOL, rtol=0,
                                   err_msg=f"hidden state {i}")
    assert len(ours.attentions) == len(theirs.attentions) == 6
    for i, (a, b) in enumerate(zip(ours.attentions, theirs.attentions)):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=TOL, rtol=0,
                                   err_msg=f"attention {i}")
    np.testing.assert_allclose(np.asarray(ours.pooler_output), theirs.pooler_output.numpy(),
                               atol=TOL, rtol=0)


# ---- pre-training heads, every checkpoint naming style ----------------------------------

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=40, type_vocab_size=2)


def random_pretraining_model(**sizes):
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(**sizes)
    model = transformers.BertForPreTraining(config).eval()
    with torch.no_grad():  # the default init leaves biases/LayerNorms at 0/1: perturb them
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def save_variant(model, directory, style: str) -> None:
    """Writes `model` as one checkpoint style an old or new exporter produces."""
    torch = require("torch")
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    model.config.to_json_file(directory / "config.json")
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if style == "modern":
        model.save_pretrained(directory)
        return
    if style in ("gamma-beta", "bin"):
        sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                       "LayerNorm.beta"): v
              for k, v in sd.items()}
    if style == "no-prefix":  # with the tied decoder copies and the position_ids buffer
        sd = {k.removeprefix("bert."): v for k, v in sd.items()}
        sd["embeddings.position_ids"] = torch.arange(model.config.max_position_embeddings)[None]
    if style == "bin":
        torch.save(sd, directory / "pytorch_model.bin")
    else:
        save_file(sd, str(directory / "model.safetensors"))


def compare_pretraining(model, directory, length: int = 12) -> None:
    torch = require("torch")
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    ids = rng.integers(0, vocab, (2, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, length // 2:] = 0
    types = np.zeros_like(ids)
    types[:, length // 3:] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    with torch.no_grad():
        theirs = model(**torch_batch(batch))

    loaded = weights.load_pretrained(directory, head="pretraining")
    assert loaded.report.initialized == [] and loaded.report.ignored == []
    net = build(loaded.config, "pretraining")
    ours = net.apply({"params": loaded.params}, ids, mask, types)
    np.testing.assert_allclose(np.asarray(ours.mlm_logits), theirs.prediction_logits.numpy(),
                               atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(ours.nsp_logits),
                               theirs.seq_relationship_logits.numpy(), atol=TOL, rtol=0)

    positions = np.array([[0, 3, 5], [1, 2, 4]], np.int32)
    gathered = net.apply({"params": loaded.params}, ids, mask, types, jnp.asarray(positions))
    expected = np.take_along_axis(theirs.prediction_logits.numpy(), positions[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(gathered.mlm_logits), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("style", ["modern", "gamma-beta", "no-prefix", "bin"])
def test_pretraining_heads_match_transformers(tmp_path, style):
    model = random_pretraining_model(**TINY)
    save_variant(model, tmp_path / style, style)
    compare_pretraining(model, tmp_path / style)


@pytest.mark.slow
def test_bert_base_cased_shape_matches_transformers(tmp_path):
    """The real bert-base-cased sizes (random weights): one short forward."""
    sizes = json.loads(shared_file("vocab", "bert-base-cased", "bert_config.json").read_text())
    model = random_pretraining_model(**sizes)
    save_variant(model, tmp_path / "base", "modern")
    compare_pretraining(model, tmp_path / "base", length=8)


# ---- the released bert-base-cased, when this machine has it cached ----------------------

MODEL_CARD = [("fashion", 0.0902), ("new", 0.0635), ("male", 0.0623),
              ("professional", 0.0442), ("super", 0.0333)]


def test_fill_mask_released_bert_base_cased(capsys):
    """The model card's fill-mask example, through the CLI, on the released weights."""
    from huggingface_hub import try_to_load_from_cache

    cached = any(isinstance(try_to_load_from_cache(repo, f), str)
                 for repo in ("bert-base-cased", "google-bert/bert-base-cased")
                 for f in ("model.safetensors", "pytorch_model.bin"))
    if not cached:
        # Legitimate under CI too: no network here, and 436 MB of weights are not CI data.
        pytest.skip("the released bert-base-cased weights are not in the local HF cache")
    from bert_jax import cli

    assert cli.main(["fill-mask", "--model", "bert-base-cased", "--json",
                     "Hello I'm a [MASK] model."]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    predictions = result if isinstance(result, list) else next(
        v for v in result.values() if isinstance(v, list))
    top = predictions[0][:5]
    assert [p["token_str"].strip() for p in top] == [t for t, _ in MODEL_CARD]
    for p, (_, score) in zip(top, MODEL_CARD):
        assert abs(p["score"] - score) < 1e-3
