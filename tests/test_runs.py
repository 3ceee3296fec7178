"""The run-directory layout (runs.py), the one padding of a ragged batch (data/padding.py)
and the program factory (train/programs.py)."""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
import pytest

from bert_jax import configlib, optim, sharding
from bert_jax.config import preset
from bert_jax.data.padding import pad_rows
from bert_jax.errors import UserError
from bert_jax.runs import RunDir
from bert_jax.train import objectives, programs

# ---- run directories --------------------------------------------------------------------


def test_run_dir_layout(tmp_path):
    run = RunDir(tmp_path)
    assert run.config == tmp_path / "config.json"
    assert run.checkpoints == tmp_path / "checkpoints"
    assert run.metrics == tmp_path / "metrics.jsonl"
    assert run.results == tmp_path / "results.json"
    assert run.test_predictions == tmp_path / "test_predictions.json"


def test_results_of_an_unfinished_run_are_none(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_results() is None
    (tmp_path / "results.json").write_text('{"steps": 3')  # cut short by a kill
    assert run.read_results() is None
    (tmp_path / "results.json").write_text('{"steps": 3}')
    assert run.read_results() == {"steps": 3}


def test_clear_unfinished_keeps_only_the_config(tmp_path):
    run = RunDir(tmp_path)
    for name in ("config.json", "metrics.jsonl", "test_predictions.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    run.clear_unfinished()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    run.clear_unfinished()  # nothing left to drop: no error


def test_model_config_of_a_saved_config(tmp_path):
    config = ml_collections.ConfigDict({"model": configlib.model_section("tiny")})
    configlib.save(config, tmp_path)
    run = RunDir(tmp_path)
    assert run.model_config() == preset("tiny")
    assert run.model_config(dtype="bfloat16") == preset("tiny", dtype="bfloat16")


@pytest.mark.parametrize("saved, message", [
    ({"model": {"hidden_size": 128, "bogus": 1}}, "bogus"),
    ({"model": {"hidden_act": "swish"}}, "hidden_act 'swish'"),
    ({"data": {}}, "has no model section"),
])
def test_bad_saved_model_config_names_the_file(tmp_path, saved, message):
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match=message) as e:
        RunDir(tmp_path).model_config()
    assert str(tmp_path / "config.json") in str(e.value)


# ---- padding ----------------------------------------------------------------------------

def test_pad_rows_copies_the_first_real_row_with_weight_zero():
    rows, weight = pad_rows(np.array([7, 3, 5]), 5)
    assert rows.tolist() == [7, 3, 5, 7, 7]
    assert weight.tolist() == [1, 1, 1, 0, 0]
    rows, weight = pad_rows(np.array([4, 9, -1, -1]), 4)  # -1: a padding slot
    assert rows.tolist() == [4, 9, 4, 4] and weight.tolist() == [1, 1, 0, 0]
    rows, weight = pad_rows(np.array([-1, -1]), 3)  # no real row (another host's rows)
    assert rows.tolist() == [0, 0, 0] and weight.tolist() == [0, 0, 0]
    rows, weight = pad_rows(np.array([2, 1]), 2)  # a full batch: nothing padded
    assert rows.tolist() == [2, 1] and weight.tolist() == [1, 1]
    with pytest.raises(ValueError, match="3 rows do not fit a batch of 2"):
        pad_rows(np.array([1, 2, 3]), 2)


# ---- the program factory ----------------------------------------------------------------

def test_mesh_from_config_takes_shape_and_rules():
    section = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), dcn_shape=(1, 1, 1),
                                             rules=(("batch", "data"),)))
    mesh, rules = programs.mesh_from_config(section)
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    assert rules == (("batch", "data"),)


@pytest.mark.slow
def test_programs_train_and_evaluate_a_classifier():
    cfg = preset("tiny", num_hidden_layers=1, num_labels=3)
    ocfg = optim.default_config()
    ocfg.update(dict(lr=1e-2, warmup_steps=0))
    tx, schedule = optim.build(ocfg, 10)
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    p = programs.build(cfg, "classification", objectives.Classification, tx, schedule, mesh)
    state = p.init_state(seed=0)
    assert jax.tree.structure(state) == jax.tree.structure(p.abstract_state())
    r = np.random.RandomState(0)
    batch = {"input_ids": r.randint(5, cfg.vocab_size, (4, 8)).astype(np.int32),
             "token_type_ids": np.zeros((4, 8), np.int32),
             "attention_mask": np.ones((4, 8), np.int32),
             "labels": np.array([0, 1, 2, 1], np.int32),
             "example_weight": np.array([1, 1, 1, 0], np.float32)}
    before = jax.device_get(state.params)
    state, metrics = p.train_step(state, sharding.global_batch(batch, mesh))
    assert int(state.step) == 1 and float(metrics["finite"]) == 1.0
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before,
                         jax.device_get(state.params))
    assert max(jax.tree.leaves(moved)) > 0
    sums = jax.device_get(p.eval_step(state.params, sharding.global_batch(batch, mesh)))
    # Sums over the three real rows: the weight-0 row counts for nothing.
    assert float(sums["loss/den"]) == 3.0 and float(sums["accuracy/den"]) == 3.0
    assert 0.0 <= float(sums["accuracy/num"]) <= 3.0
