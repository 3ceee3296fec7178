"""The registry of heads and objectives (bert_jax/heads.py) and the objectives it names.

Every head builds, and is recognised again from its parameters and from a checkpoint's
names; the pre-training config picks its objective by name (`nsp=False` an alias of
"mlm"); SOP is the NSP head and loss under its own metric names; a run refuses data
made for another pair task; and a tiny mlm_sop run trains end to end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bert_jax import configlib, data, heads, weights
from bert_jax.config import preset
from bert_jax.errors import UserError
from bert_jax.inference import infer_head
from bert_jax.model import build, init_params
from bert_jax.tokenizer import Tokenizer
from bert_jax.train import pretrain
from bert_jax.train import step as step_lib

CFG = preset("tiny")


@pytest.mark.parametrize("name", list(heads.HEADS))
def test_every_head_builds_and_is_recognised(name):
    params = init_params(build(CFG, name), jax.random.key(0))
    assert infer_head(params) == name
    assert weights.detect_head(list(weights.flax_to_hf(params, vocab_size=CFG.vocab_size))) == name


@pytest.mark.parametrize("overrides,expected", [
    ([], "mlm_nsp"),
    (["--config.nsp=False"], "mlm"),
    (["--config.objective=mlm"], "mlm"),
    (["--config.objective=mlm_sop"], "mlm_sop"),
    (["--config.objective=mlm", "--config.nsp=False"], "mlm"),
])
def test_config_names_its_objective(overrides, expected):
    config = configlib.load("configs/pretrain.py:demo", overrides)
    assert heads.config_objective(config) == expected


def test_config_objective_errors_and_old_configs():
    config = configlib.load("configs/pretrain.py:demo",
                            ["--config.objective=mlm_sop", "--config.nsp=False"])
    with pytest.raises(UserError, match="alias of objective=mlm"):
        heads.config_objective(config)
    with pytest.raises(UserError, match="unknown objective 'electra'"):
        heads.config_objective(configlib.load("configs/pretrain.py:demo",
                                              ["--config.objective=electra"]))
    # A config saved before `objective` existed.
    assert heads.config_objective(ml_collections.ConfigDict({"nsp": True})) == "mlm_nsp"
    assert heads.config_objective(ml_collections.ConfigDict({"nsp": False})) == "mlm"


def _batch(rng: np.random.Generator, n: int = 6, length: int = 16, p: int = 3):
    ids = rng.integers(5, CFG.vocab_size, (n, length)).astype(np.int32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.repeat([[0] * 8 + [1] * 8], n, 0).astype(np.int32),
            "masked_lm_positions": np.tile(np.arange(1, 1 + p, dtype=np.int32), (n, 1)),
            "masked_lm_ids": rng.integers(5, CFG.vocab_size, (n, p)).astype(np.int32),
            "masked_lm_weights": np.ones((n, p), np.float32),
            "next_sentence_label": rng.integers(0, 2, n).astype(np.int32)}


@pytest.mark.slow
def test_sop_is_the_pair_head_and_loss_under_its_own_names():
    batch = _batch(np.random.default_rng(0))
    module = build(CFG, heads.objective("mlm_sop").head)
    params = init_params(module, jax.random.key(1))
    scores = {}
    for name in ("mlm_nsp", "mlm_sop", "mlm"):
        spec = heads.objective(name)
        objective = spec.make(build(CFG, spec.head))
        sums = jax.jit(step_lib.make_eval_step(objective))(params, batch)
        scores[name] = step_lib.finish_eval(jax.device_get(sums))
    assert objectives_names(scores["mlm_sop"]) == {"masked_lm", "sentence_order"}
    assert objectives_names(scores["mlm_nsp"]) == {"masked_lm", "next_sentence"}
    assert objectives_names(scores["mlm"]) == {"masked_lm"}
    assert scores["mlm_sop"]["sentence_order_loss"] == scores["mlm_nsp"]["next_sentence_loss"]
    assert scores["mlm_sop"]["masked_lm_loss"] == scores["mlm"]["masked_lm_loss"]
    # The loss by hand: softmax cross-entropy of the pair head's logits.
    out = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                       batch["token_type_ids"], batch["masked_lm_positions"])
    logp = jax.nn.log_softmax(out.nsp_logits)
    expected = -jnp.mean(logp[jnp.arange(6), batch["next_sentence_label"]])
    np.testing.assert_allclose(scores["mlm_sop"]["sentence_order_loss"], expected, rtol=1e-6)
    assert heads.objective("mlm_sop").make(module).loss_names() == (
        "masked_lm_loss", "sentence_order_loss")


def objectives_names(metrics: dict[str, float]) -> set[str]:
    return {k.rsplit("_", 1)[0] for k in metrics}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> dict[str, str]:
    """seq-32 NSP and SOP data (train = eval) and a vocab, from 40 demo documents."""
    root = tmp_path_factory.mktemp("objective_data")
    docs = data.demo_corpus_path().read_text(encoding="utf-8").strip().split("\n\n")
    (root / "text.txt").write_text("\n\n".join(docs[:40]) + "\n")
    vocab = data.train_vocab([str(root / "text.txt")], root / "vocab", vocab_size=320)
    tokenizer = Tokenizer.from_vocab(vocab)
    out = {"vocab": str(vocab)}
    for pair in ("nsp", "sop"):
        data.create_pretraining_data([str(root / "text.txt")], str(root / pair), tokenizer,
                                     max_seq_length=32, max_predictions_per_seq=5,
                                     dupe_factor=2, pair_objective=pair, progress=False)
        out[pair] = str(root / pair)
    return out


def _tiny(small_data, pair: str, objective: str) -> ml_collections.ConfigDict:
    return configlib.load("configs/pretrain.py:tiny", [
        f"--config.data.train={small_data[pair]}", f"--config.data.eval={small_data[pair]}",
        f"--config.data.vocab={small_data['vocab']}", "--config.model.vocab_size=320",
        "--config.train.phase2_start=0", f"--config.objective={objective}"])


def test_a_run_refuses_data_of_another_pair_task(small_data):
    with pytest.raises(UserError, match="--pair-objective nsp, but the objective mlm_sop"):
        pretrain.make_loader(_tiny(small_data, "nsp", "mlm_sop"), small_data["nsp"], 8,
                             seed=0, train=True)
    with pytest.raises(UserError, match="--pair-objective sop, but the objective mlm_nsp"):
        pretrain.make_loader(_tiny(small_data, "sop", "mlm_nsp"), small_data["sop"], 8,
                             seed=0, train=True)
    # MLM alone reads either.
    for pair in ("nsp", "sop"):
        loader = pretrain.make_loader(_tiny(small_data, pair, "mlm"), small_data[pair], 8,
                                      seed=0, train=True)
        assert loader.pair_objective == pair


def test_held_out_eval_counts_every_example_once(small_data):
    """More eval batches than the data fills: the rest are zero-weight, never a 2nd pass."""
    loader = pretrain.make_loader(_tiny(small_data, "sop", "mlm_sop"), small_data["sop"], 8,
                                  seed=0, train=False)
    batches = list(pretrain.eval_batches(loader, 3 * len(loader) + 1))
    assert len(batches) == 3 * len(loader) + 1
    assert sum(b["example_weight"].sum() for b in batches) == loader.num_examples
    assert not any(b["masked_lm_weights"].any() for b in batches[len(loader):])


@pytest.mark.slow
def test_tiny_mlm_sop_run_reports_sentence_order(small_data, tmp_path):
    result = pretrain.run(_tiny(small_data, "sop", "mlm_sop"), tmp_path / "run",
                          progress=False)
    assert {"sentence_order_loss", "eval_sentence_order_accuracy"} <= set(result)
    assert not any(k.startswith(("next_sentence", "eval_next_sentence")) for k in result)
    assert 0.0 <= result["eval_sentence_order_accuracy"] <= 1.0
    exported = weights.load_pretrained(tmp_path / "run", head="auto")
    assert exported.head == "pretraining"  # SOP trains the NSP head's weights
