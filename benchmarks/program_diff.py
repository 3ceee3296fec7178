"""Did a change alter the compiled programs? Dump them from two checkouts and compare.

    PYTHONPATH=/path/to/old python benchmarks/program_diff.py dump /tmp/old
    PYTHONPATH=$PWD        python benchmarks/program_diff.py dump /tmp/new
    python benchmarks/program_diff.py compare /tmp/old /tmp/new

`dump` compiles, on one device, the bert-base train step (batch 8, seq 128, 20 masked
positions, BERT Adam, dropout on), the encoder forward and the pre-training forward (masked
positions), and writes each optimized HLO module and its cost analysis. `compare` drops
what does not change the program (debug-info tables, metadata, instruction numbering) and
reports, per program, the differing lines and both costs. Identical programs run at the
same speed, so a refactor that compares equal needs no timing, which on a shared machine is
noise. Run `dump` with the checkout under test first on PYTHONPATH (and benchmarks/ of
either checkout: the batch comes from benchmarks/train.py).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

PROGRAMS = ("train", "encoder", "pretraining")


def dump(out: Path) -> None:
    import jax

    sys.path.insert(0, str(Path(__file__).parent))
    from train import make_batch

    from bert_jax import config as config_lib
    from bert_jax import model as modeling
    from bert_jax import optim, sharding
    from bert_jax.train import objectives
    from bert_jax.train import state as state_lib
    from bert_jax.train import step as step_lib

    cfg = config_lib.preset("base")
    batch = make_batch(cfg, 8, 128, 20)
    ocfg = optim.default_config()
    ocfg.warmup_steps = 10
    tx, schedule = optim.build(ocfg, 1000)
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    module = modeling.build(cfg, "pretraining")
    # The functions every version of the project has, not the program factory (new).
    shardings = state_lib.state_shardings(module, tx, mesh)
    state = jax.eval_shape(lambda: state_lib.init_state(module, tx, mesh, 0))
    train = step_lib.jit_train_step(
        step_lib.make_train_step(objectives.PreTraining(module), tx, schedule), shardings, mesh)
    encoder = modeling.build(cfg, "encoder")
    x = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids",
                               "masked_lm_positions")}
    compiled = {
        "train": train.lower(state, sharding.global_batch(batch, mesh)).compile(),
        "encoder": jax.jit(lambda p, x: encoder.apply(
            {"params": p}, x["input_ids"], x["attention_mask"], x["token_type_ids"]
        ).last_hidden_state).lower(state.params["bert"], x).compile(),
        "pretraining": jax.jit(lambda p, x: module.apply(
            {"params": p}, x["input_ids"], x["attention_mask"], x["token_type_ids"],
            x["masked_lm_positions"]).mlm_logits).lower(state.params, x).compile(),
    }
    out.mkdir(parents=True, exist_ok=True)
    costs = {}
    for name, program in compiled.items():
        (out / f"{name}.hlo").write_text(program.as_text())
        cost = program.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        costs[name] = {"flops": cost.get("flops"), "bytes": cost.get("bytes accessed")}
    (out / "cost.json").write_text(json.dumps(costs, indent=1))
    print(json.dumps(costs))


def normalized(text: str) -> list[str]:
    """The program without what does not change it: the debug-info tables (lines that
    start with an index), metadata and stack-frame ids, and instruction numbering."""
    lines = []
    for line in text.splitlines():
        if re.match(r"^\d+ ", line):
            continue
        line = re.sub(r", metadata=\{[^}]*\}", "", line)
        line = re.sub(r",? ?stack_frame_id=\d+", "", line)
        line = re.sub(r"([A-Za-z_][\w-]*)\.\d+", r"\1", line)  # add.123 -> add
        lines.append(line)
    return lines


def compare(a: Path, b: Path) -> int:
    cost_a = json.loads((a / "cost.json").read_text())
    cost_b = json.loads((b / "cost.json").read_text())
    differing = 0
    for name in PROGRAMS:
        old, new = normalized((a / f"{name}.hlo").read_text()), normalized(
            (b / f"{name}.hlo").read_text())
        diff = [d for d in difflib.unified_diff(old, new, lineterm="", n=0)
                if d[:1] in "+-" and d[:3] not in ("+++", "---")]
        differing += bool(diff)
        print(f"{name}: {len(diff)} differing lines of {len(old)}/{len(new)}; "
              f"flops {cost_a[name]['flops']:.6g} -> {cost_b[name]['flops']:.6g}, "
              f"bytes {cost_a[name]['bytes']:.6g} -> {cost_b[name]['bytes']:.6g}")
        for line in diff[:10]:
            print("   ", line[:160])
    return 1 if differing else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("dump").add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = p.parse_args()
    if args.command == "dump":
        dump(args.out)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
