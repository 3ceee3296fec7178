"""Runs a few train steps of the tiny model on several meshes; prints JSON results.

Started by tests/test_sharding.py in a fresh process with
XLA_FLAGS=--xla_force_host_platform_device_count=8, so that 8 CPU devices exist.
Reference: the same steps on a single device (mesh (1, 1, 1)).
"""

import json
import sys

import jax
import numpy as np

from bert_jax import config, optim, sharding
from bert_jax.train import objectives, programs


def batch(seed, b=16, length=16, p=4, vocab=128):
    r = np.random.RandomState(seed)
    mask = np.ones((b, length), np.int32)
    mask[: b // 2, length - 3:] = 0  # some padding
    return dict(
        input_ids=r.randint(5, vocab, (b, length)).astype(np.int32),
        token_type_ids=(np.arange(length)[None] >= length // 2).repeat(b, 0).astype(np.int32),
        attention_mask=mask,
        masked_lm_positions=r.randint(1, length - 3, (b, p)).astype(np.int32),
        masked_lm_ids=r.randint(5, vocab, (b, p)).astype(np.int32),
        masked_lm_weights=(r.rand(b, p) > 0.2).astype(np.float32),
        next_sentence_label=r.randint(0, 2, (b,)).astype(np.int32))


def run(mesh_shape, accum_steps=1, steps=3, devices=None, dropout=0.0):
    cfg = config.preset("tiny", hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    ocfg = optim.default_config()
    ocfg.update(dict(lr=1e-3, warmup_steps=1))
    tx, schedule = optim.build(ocfg, 10)
    mesh = sharding.make_mesh(mesh_shape, devices)
    p = programs.build(cfg, "pretraining", objectives.PreTraining, tx, schedule, mesh,
                       accum_steps=accum_steps)
    state = p.init_state(seed=0)
    losses = []
    for i in range(steps):
        state, metrics = p.train_step(state, sharding.global_batch(batch(i), mesh))
        losses.append(float(metrics["loss"]))
    sharded = sorted({str(s.spec) for s in jax.tree.leaves(p.state_shardings.params)
                      if not s.is_fully_replicated})
    return state, losses, sharded


def max_diffs(a, b):
    a, b = jax.device_get((a, b))  # gather every shard to the host
    return [float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]


def main():
    assert jax.device_count() == 8, jax.device_count()
    ref_state, ref_losses, _ = run((1, 1, 1), devices=jax.devices()[:1])
    results = {"reference_losses": ref_losses}
    for shape, accum in [((8, 1, 1), 1), ((2, 4, 1), 1), ((2, 2, 2), 1), ((1, 1, 1), 4),
                         ((8, 1, 1), 2)]:
        devices = jax.devices()[:1] if shape == (1, 1, 1) else None
        state, losses, specs = run(shape, accum, devices=devices)
        diffs = max_diffs(state.params, ref_state.params)
        opt = max_diffs(state.opt_state, ref_state.opt_state)
        results[f"{shape}x{accum}"] = {"losses": losses, "max_param_diff": max(diffs),
                                       "max_opt_diff": max(opt), "specs": specs}
    # With dropout: the data shards of the step's shard_map draw the one-device masks.
    ref_state, ref_losses, _ = run((1, 1, 1), devices=jax.devices()[:1], dropout=0.1)
    state, losses, _ = run((8, 1, 1), dropout=0.1)
    results["dropout"] = {"reference_losses": ref_losses, "losses": losses,
                          "max_param_diff": max(max_diffs(state.params, ref_state.params))}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
