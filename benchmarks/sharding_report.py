"""What the sharded train step moves: per-device state and collective bytes per step, per mesh.

  python benchmarks/sharding_report.py                       # bert-base and bert-large
  python benchmarks/sharding_report.py --model base --json report.json

Compiles (never runs) the pre-training step (MLM + NSP, BERT Adam, fp32) on 8 simulated
CPU devices for the meshes (data, fsdp, tensor) = (8,1,1) with and without gradient
accumulation, (1,8,1), (2,4,1), (2,2,2) and (1,1,8), and reads from XLA's compiled
program: the per-device state (from the state's shardings; the compiled program's
argument bytes agree), every collective with its bytes and how often it runs
(bert_jax/hlo_stats.py: ops in a loop count trip-count times), what runs inside the
accumulation loop, and XLA's "Involuntary full rematerialization" warnings. Prints a
markdown table; `--json` also writes every number. tests/test_sharding_program.py runs
this on a small model and asserts the targets.

The ideal bytes per device per step (P: the parameters' fp32 bytes; d, f, t: the mesh;
A: one activation [batch / (d f), seq, hidden] in the compute dtype; L layers):
  data  d > 1: P / (f t)          one all-reduce of the local gradient shard
  fsdp  f > 1: 3 P / t            all-gather weights forward and backward, reduce-scatter
  tensor t > 1: (4 L + 1) A       Megatron: two all-reduces per layer forward, two backward,
                                  one for the vocab-sharded embedding lookup
and the ideal of a mesh is the sum of its terms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __name__ == "__main__" and "jax" not in sys.modules:  # 8 CPU devices unless set
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bert_jax import config as config_lib  # noqa: E402
from bert_jax import hlo_stats, optim, sharding  # noqa: E402
from bert_jax.train import objectives, programs  # noqa: E402

# (mesh, accum_steps)
MESHES = (((8, 1, 1), 1), ((8, 1, 1), 4), ((1, 8, 1), 1), ((2, 4, 1), 1), ((2, 2, 2), 1),
          ((1, 1, 8), 1))

# name -> (model config, global batch, seq len, masked positions)
MODELS = {
    "base": (config_lib.preset("base"), 64, 128, 20),
    "large": (config_lib.preset("large"), 64, 128, 20),
    # The test's model: 8 heads (so 8 tensor shards split whole heads) and a vocabulary
    # of 1000, padded to 1024 rows.
    "small": (config_lib.preset("tiny", hidden_size=128, num_attention_heads=8,
                                intermediate_size=512, vocab_size=1000,
                                max_position_embeddings=64), 32, 64, 8),
}


def abstract_batch(mesh, batch: int, seq: int, preds: int) -> dict[str, jax.ShapeDtypeStruct]:
    rows = sharding.batch_sharding(mesh)
    shapes = {"input_ids": (batch, seq), "token_type_ids": (batch, seq),
              "attention_mask": (batch, seq), "masked_lm_positions": (batch, preds),
              "masked_lm_ids": (batch, preds), "masked_lm_weights": (batch, preds),
              "next_sentence_label": (batch,)}
    return {k: jax.ShapeDtypeStruct(s, np.float32 if k == "masked_lm_weights" else np.int32,
                                    sharding=rows) for k, s in shapes.items()}


def ideal_bytes(cfg: config_lib.BertConfig, mesh_shape, param_bytes: int, batch: int,
                seq: int) -> float:
    """The module docstring's formula."""
    d, f, t = mesh_shape
    ideal = 0.0
    if d > 1:
        ideal += param_bytes / (f * t)
    if f > 1:
        ideal += 3 * param_bytes / t
    if t > 1:
        act = batch // (d * f) * seq * cfg.hidden_size * np.dtype(cfg.dtype).itemsize
        ideal += (4 * cfg.num_hidden_layers + 1) * act
    return ideal


def measure(cfg: config_lib.BertConfig, mesh_shape, accum_steps: int, batch: int, seq: int,
            preds: int, rules: sharding.Rules = sharding.RULES) -> dict:
    """Compiles the train step on `mesh_shape` and reads what it holds and moves."""
    tx, schedule = optim.build(optim.default_config(), 1_000_000)
    mesh = sharding.make_mesh(mesh_shape)
    p = programs.build(cfg, "pretraining", objectives.PreTraining, tx, schedule, mesh, rules,
                       accum_steps=accum_steps)
    state = p.abstract_state()
    with hlo_stats.captured_stderr() as log:
        compiled = p.train_step.lower(state, abstract_batch(mesh, batch, seq, preds)).compile()
    stats = hlo_stats.summary(hlo_stats.collectives(compiled.as_text()))
    params = hlo_stats.total_bytes(state.params)
    d, f, t = mesh_shape
    total_state = hlo_stats.total_bytes(state)
    per_device = hlo_stats.per_device_bytes(state)
    memory = compiled.memory_analysis()
    ideal = ideal_bytes(cfg, mesh_shape, params, batch, seq)
    return {
        "mesh": list(mesh_shape), "accum_steps": accum_steps, "batch": batch, "seq": seq,
        "param_bytes": params, "state_bytes": total_state, "state_per_device": per_device,
        "state_vs_ideal": per_device / (total_state / (f * t)),
        "argument_bytes": memory.argument_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        **stats, "collectives_over_P": stats["total_bytes"] / params,
        "ideal_bytes": ideal, "over_ideal": stats["total_bytes"] / ideal if ideal else None,
        "involuntary_remat": log[0].count(hlo_stats.INVOLUNTARY_REMAT),
    }


def _mb(x: float) -> str:
    return f"{x / 1e6:,.1f}"


def table(name: str, rows: list[dict]) -> str:
    out = [f"**{name}** (P = {_mb(rows[0]['param_bytes'])} MB, batch {rows[0]['batch']}, "
           f"seq {rows[0]['seq']})", "",
           "| mesh (d,f,t) | accum | state/device MB (vs total/(f t)) | all-reduce | "
           "all-gather | reduce-scatter | other | collectives / P | ideal / P | "
           "measured / ideal | in loop | remat |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, p = r["bytes"], r["param_bytes"]
        other = b["all-to-all"] + b["collective-permute"]
        out.append(
            f"| {tuple(r['mesh'])} | {r['accum_steps']} | {_mb(r['state_per_device'])} "
            f"({r['state_vs_ideal']:.2f}x) | {_mb(b['all-reduce'])} | {_mb(b['all-gather'])} | "
            f"{_mb(b['reduce-scatter'])} | {_mb(other)} | {r['collectives_over_P']:.2f} | "
            f"{r['ideal_bytes'] / p:.2f} | {r['over_ideal']:.2f} | {r['in_loop_ops']} | "
            f"{r['involuntary_remat']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", choices=sorted(MODELS),
                        help="repeatable; default: base and large")
    parser.add_argument("--json", help="also write every number to this file")
    args = parser.parse_args(argv)
    if jax.device_count() != 8:
        sys.exit(f"needs 8 devices, found {jax.device_count()} (XLA_FLAGS set elsewhere?)")
    results = {}
    for name in args.model or ["base", "large"]:
        cfg, batch, seq, preds = MODELS[name]
        results[name] = [measure(cfg, shape, accum, batch, seq, preds)
                         for shape, accum in MESHES]
        print(table(name, results[name]) + "\n", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
