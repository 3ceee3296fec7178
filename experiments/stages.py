"""The expensive steps of a study, as plain functions bundled in `Stages`.

The driver (experiments/study.py) only sequences and records them, so a test can pass
a `Stages` of fakes that record their calls. The real ones:
  make_data  create_pretraining_data over the corpus, for one DataSpec
  calibrate  seconds per train step of a config (a short run), to turn minutes into steps
  pretrain   bert_jax.train.pretrain.run (which resumes from the workdir's checkpoint)
  evaluate   MLM (+ NSP) metrics of a workdir's last checkpoint on a held-out dataset
  glue       the `bert-jax glue` command in a subprocess; returns its summary.json
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

from bert_jax.errors import UserError
from experiments.datasets import DataSpec


def make_data(spec: DataSpec, study: ml_collections.ConfigDict, out_dir: Path
              ) -> dict[str, Any]:
    """Makes (or finds finished) the dataset `spec` describes in `out_dir`."""
    from bert_jax import data
    from bert_jax.tokenizer import Tokenizer

    c = study.corpus
    files = (c.train if spec.split == "train" else c.eval).split(",")
    stats = data.create_pretraining_data(
        files, str(out_dir), Tokenizer.from_vocab(study.pretrain.data.vocab),
        max_seq_length=spec.max_seq_length, max_predictions_per_seq=spec.max_predictions,
        masked_lm_prob=spec.masked_lm_prob or 0.15, whole_word_masking=bool(spec.whole_word),
        masking=spec.masking, pair_objective="nsp" if spec.nsp else "none",
        dupe_factor=int(c.dupe_factor) if spec.split == "train" else 1,
        short_seq_prob=float(c.short_seq_prob), random_seed=int(c.seed),
        input_format=c.input_format, num_workers=int(c.workers), progress=False)
    return {"instances": int(stats["instances"])}


def calibrate(cfg: ml_collections.ConfigDict, workdir: Path) -> float:
    """Seconds per train step of `cfg` (phase 1), from a short run without evaluation."""
    from bert_jax.train import pretrain
    from bert_jax.train.writer import read_metrics

    probe = cfg.copy_and_resolve_references()
    t = probe.train
    t.log_every = 5
    t.total_steps, t.phase2_start = 4 * t.log_every, 0
    t.checkpoint_every, probe.data.eval = t.total_steps, ""
    probe.optimizer.warmup_steps = 1
    pretrain.run(probe, workdir, progress=False)
    rates = [r["seq_per_s"] for r in read_metrics(workdir, "train")[1:]]  # skip compile
    return int(t.batch_size) / (sum(rates) / len(rates))


def pretrain(cfg: ml_collections.ConfigDict, workdir: Path, progress: bool = True) -> None:
    from bert_jax.train import pretrain as pretrain_lib

    pretrain_lib.run(cfg, workdir, progress=progress)


def evaluate(workdir: Path, eval_dir: Path, batches: int = 0) -> dict[str, float]:
    """The pre-training metrics of `workdir`'s last checkpoint on `eval_dir` (static
    masks), over its first `batches` batches (0: all of it)."""
    from bert_jax import checkpoint, configlib, heads, optim, sharding
    from bert_jax import model as model_lib
    from bert_jax.data import PretrainingLoader
    from bert_jax.train import pretrain as pretrain_lib
    from bert_jax.train import state as state_lib
    from bert_jax.train import step as step_lib

    config = configlib.load_saved(workdir)
    spec = heads.objective(heads.config_objective(config))
    module = model_lib.build(configlib.model_config(config.model), spec.head)
    params, step = checkpoint.restore_params(Path(workdir) / "checkpoints")
    mesh = sharding.make_mesh(tuple(config.mesh.shape))
    rules = sharding.config_rules(config.mesh)
    optimizer, _ = optim.build(config.optimizer, int(config.train.total_steps))
    eval_step = step_lib.jit_eval_step(
        step_lib.make_eval_step(spec.make(module)),
        state_lib.state_shardings(module, optimizer, mesh, rules).params, mesh, rules)
    batch_size = int(config.train.batch_size)
    n = PretrainingLoader(eval_dir, batch_size, shuffle=False, repeat=False,
                          drop_remainder=False).num_examples
    config.data.masking = "static"  # the reference masks, whatever the variant trained on
    config.train.eval_batches = batches or math.ceil(n / batch_size)
    phase = pretrain_lib.Phase(0, 0, 0, batch_size, "", str(eval_dir))
    metrics = pretrain_lib.evaluate(config, eval_step, params, phase, mesh)
    examples = min(n, int(config.train.eval_batches) * batch_size)
    return {**metrics, "checkpoint_step": int(step), "examples": examples}


def glue_command(model_dir: Path, out_dir: Path, glue: ml_collections.ConfigDict) -> list[str]:
    return [sys.executable, "-m", "bert_jax.cli", "glue", "--task", glue.tasks,
            "--model", str(model_dir), "--data-dir", str(glue.data_dir),
            "--workdir", str(out_dir), "--lrs", ",".join(f"{lr:g}" for lr in glue.lrs),
            "--seeds", ",".join(str(s) for s in glue.seeds), *glue.overrides, "--json",
            "--no-progress"]


def glue(model_dir: Path, out_dir: Path, glue_cfg: ml_collections.ConfigDict
         ) -> dict[str, Any]:
    """Fine-tunes `model_dir` on the GLUE tasks (`bert-jax glue` skips finished runs);
    its output goes to `<out_dir>/glue.log`. Returns `<out_dir>/summary.json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "glue.log"
    command = glue_command(model_dir, out_dir, glue_cfg)
    with open(log, "a") as f:
        f.write("$ " + " ".join(command) + "\n")
        f.flush()
        code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise UserError(f"bert-jax glue failed (exit {code}); the end of {log}:\n{tail}")
    return json.loads((out_dir / "summary.json").read_text())


@dataclasses.dataclass(frozen=True)
class Stages:
    make_data: Callable[[DataSpec, ml_collections.ConfigDict, Path], dict[str, Any]] = make_data
    calibrate: Callable[[ml_collections.ConfigDict, Path], float] = calibrate
    pretrain: Callable[..., None] = pretrain
    evaluate: Callable[[Path, Path, int], dict[str, float]] = evaluate
    glue: Callable[[Path, Path, ml_collections.ConfigDict], dict[str, Any]] = glue
