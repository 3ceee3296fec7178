"""The expensive steps of a study, as plain functions bundled in `Stages`.

The driver (experiments/study.py) only sequences and records them, so a test can pass
a `Stages` of fakes that record their calls. The real ones:
  make_corpus the study's pre-training text in <study>/corpus (experiments/corpus.py)
  make_vocab  the `bert-jax train-vocab` command over the pre-training text
  make_data   create_pretraining_data over the corpus, for one DataSpec
  baseline    the frequent-token MLM baseline on the held-out set (experiments/baseline.py)
  calibrate   seconds per train step of a config (a short run), to turn minutes into steps
  pretrain    bert_jax.train.pretrain.run (which resumes from the workdir's checkpoint);
              for a config of 0 steps (random_init) the initial weights, saved at step 0
  evaluate    `bert_jax.train.evaluate` (the `bert-jax evaluate` command's function): MLM
              metrics of a workdir's last checkpoint on a held-out dataset
  glue        the `bert-jax glue` command in a subprocess; returns its summary.json
Commands run as `sys.executable -m bert_jax.cli` with this checkout first on PYTHONPATH,
so a study runs the code it was started from, not another installed copy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

from bert_jax.errors import UserError
from bert_jax.runs import RunDir
from experiments.corpus import make_corpus
from experiments.datasets import DataSpec

REPO = Path(__file__).resolve().parent.parent


def command(*args: str) -> list[str]:
    """A bert-jax command line run by this interpreter."""
    return [sys.executable, "-m", "bert_jax.cli", *args]


def run_command(args: list[str], log: Path) -> None:
    """Runs a command with this checkout first on PYTHONPATH, appending its output to
    `log`; a failure raises UserError with the end of the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}
    with open(log, "a") as f:
        f.write("$ " + " ".join(args) + "\n")
        f.flush()
        code = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise UserError(f"{' '.join(args[2:4])} failed (exit {code}); the end of {log}:\n{tail}")


def make_vocab(study: ml_collections.ConfigDict, out_dir: Path) -> dict[str, Any]:
    """`bert-jax train-vocab` on the pre-training text -> `out_dir/vocab.txt`."""
    v = study.vocab
    run_command(command("train-vocab", "--input", *study.corpus.train.split(","),
                        "--output", str(out_dir), "--vocab-size", str(int(v.size)),
                        "--min-frequency", str(int(v.min_frequency))),
                out_dir / "train-vocab.log")
    tokens = len((out_dir / "vocab.txt").read_text(encoding="utf-8").splitlines())
    if tokens > int(v.size) or tokens <= int(v.size) - 128:
        # The model has vocab.size rows: fewer tokens than that (beyond the padding a
        # vocab may have) means the text is too small for the size asked for.
        raise UserError(f"train-vocab made {tokens} tokens for vocab.size={v.size}; "
                        "lower --config.vocab.size")
    return {"tokens": tokens}


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
        masking=spec.masking, pair_objective=spec.pair,
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
    from experiments import variants

    if variants.pretrains(cfg):
        pretrain_lib.run(cfg, workdir, progress=progress)
    else:
        save_initial(cfg, workdir)


def save_initial(cfg: ml_collections.ConfigDict, workdir: Path) -> None:
    """A workdir whose checkpoint (step 0) holds `cfg`'s initial weights (seed
    `cfg.seed`), as pre-training would start from them: what random_init fine-tunes."""
    from bert_jax import checkpoint, configlib, heads, optim
    from bert_jax.train import programs

    spec = heads.config_spec(cfg)
    opt = cfg.optimizer.copy_and_resolve_references()
    opt.warmup_steps = 0
    optimizer, _ = optim.build(opt, 1)  # its state is saved, never used
    mesh, rules = programs.mesh_from_config(cfg.mesh)
    # The program factory pre-training uses; nothing is compiled but the initialisation.
    state = programs.build(configlib.model_config(cfg.model), spec.head, spec.make, optimizer,
                           None, mesh, rules).init_state(int(cfg.seed))
    configlib.save(cfg, workdir)
    ckpt = checkpoint.Checkpointer(RunDir(workdir).checkpoints, keep=1)
    ckpt.save(0, state, {"phase": 0})
    ckpt.close()


def evaluate(workdir: Path, eval_dir: Path, batches: int = 0) -> dict[str, float]:
    """The MLM metrics of `workdir`'s last checkpoint on `eval_dir` (its stored static
    masks), over its first `batches` batches (0: all of it), by `bert-jax evaluate`'s
    function, and its accuracy on masked word starts and `##` pieces apart
    (experiments/mlm_by_piece.py: what tells whole-word masking's effects apart). Only
    the MLM metrics: the reference set's pair task may not be the variant's (an SOP head
    on NSP pairs scores nothing meaningful)."""
    from bert_jax import configlib
    from bert_jax.train.evaluate import evaluate as evaluate_model
    from experiments import mlm_by_piece

    config = configlib.load_saved(workdir)
    batch_size = int(config.train.batch_size)
    result = evaluate_model(str(workdir), str(eval_dir), batch_size=batch_size,
                            max_batches=batches or None, progress=False)
    pieces = mlm_by_piece.score(workdir, eval_dir, batch_size, batches)
    return {**{k: float(v) for k, v in result.items() if k.startswith("masked_lm_")},
            **{f"masked_lm_{k}": pieces[k] for k in ("start_accuracy", "start_positions",
                                                     "continuation_accuracy",
                                                     "continuation_positions")},
            "checkpoint_step": int(result["checkpoint_step"]), "examples": int(result["examples"])}


def baseline(train_dir: Path, eval_dir: Path) -> dict[str, Any]:
    from experiments.baseline import frequent_token_baseline

    return frequent_token_baseline(train_dir, eval_dir)


def glue_command(model_dir: Path, out_dir: Path, glue: ml_collections.ConfigDict) -> list[str]:
    return command("glue", "--task", glue.tasks, "--model", str(model_dir),
                   "--data-dir", str(glue.data_dir), "--workdir", str(out_dir),
                   "--lrs", ",".join(f"{lr:g}" for lr in glue.lrs),
                   "--seeds", ",".join(str(s) for s in glue.seeds), *glue.overrides,
                   "--json", "--no-progress")


def glue(model_dir: Path, out_dir: Path, glue_cfg: ml_collections.ConfigDict
         ) -> dict[str, Any]:
    """Fine-tunes `model_dir` on the GLUE tasks (`bert-jax glue` skips finished runs);
    its output goes to `<out_dir>/glue.log`. Returns `<out_dir>/summary.json`."""
    run_command(glue_command(model_dir, out_dir, glue_cfg), out_dir / "glue.log")
    return json.loads((out_dir / "summary.json").read_text())


@dataclasses.dataclass(frozen=True)
class Stages:
    make_corpus: Callable[[ml_collections.ConfigDict, Path], dict[str, Any]] = make_corpus
    make_vocab: Callable[[ml_collections.ConfigDict, Path], dict[str, Any]] = make_vocab
    baseline: Callable[[Path, Path], dict[str, Any]] = baseline
    make_data: Callable[[DataSpec, ml_collections.ConfigDict, Path], dict[str, Any]] = make_data
    calibrate: Callable[[ml_collections.ConfigDict, Path], float] = calibrate
    pretrain: Callable[..., None] = pretrain
    evaluate: Callable[[Path, Path, int], dict[str, float]] = evaluate
    glue: Callable[[Path, Path, ml_collections.ConfigDict], dict[str, Any]] = glue
