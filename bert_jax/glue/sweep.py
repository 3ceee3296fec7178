"""GLUE sweeps: tasks x learning rates x seeds, resumable, summarised on dev.

    summary = sweep.sweep(config, ["RTE", "MRPC"], "bert-base-cased", "glue_data",
                          "runs/glue", lrs=(2e-5, 3e-5), seeds=(1, 2, 3))
    summary["tasks"]["RTE"]["mean"], summary["tasks"]["RTE"]["best_lr"]

Each run is `finetune.finetune` in `<workdir>/<task>/lr<lr>_seed<seed>/`; its results.json,
written last and atomically, marks it done. A rerun skips finished runs, so a sweep killed
half-way keeps every finished run and redoes only the others (a fine-tuning run is short:
an unfinished one starts over). A finished run made with another recipe (config fields
other than lrs/seeds/logging) is an error, never silently mixed in.

The learning rate of each task is chosen on dev by the mean over seeds of the task's main
metric (`metrics.main_metric`: the mean of its official metrics); mean ± std (sample
std, ddof=1) and the best seed are reported at that lr. Written into `workdir`:
  summary.json  {"tasks": {task: {"main_metric": <its name>, "best_lr", "mean", "std",
                 "best", "best_seed", "n_seeds", "metrics", "by_lr", "runs": [...]}},
                 "glue_score": <float when all nine tasks ran, else null>, ...}
  results.md    the table `bert-jax glue` prints; results.csv one row per run;
  results.png   dev main metric of every run against lr, one panel per task;
  submission/ + submission.zip   with predict_test: the best run's test predictions
                 (AX by the MNLI model), as the GLUE server takes them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from bert_jax.errors import UserError
from bert_jax.glue import metrics as glue_metrics
from bert_jax.glue import reports
from bert_jax.glue.features import load_task_data
from bert_jax.glue.submission import write_submission
from bert_jax.glue.tasks import GLUE_TASKS, TASKS, get_task, split_path
from bert_jax.runs import RunDir

log = logging.getLogger(__name__)

# Config fields that may differ between the invocations of one sweep: they do not change
# what a run computes (lrs/seeds pick the runs; the rest is logging and bookkeeping).
_FREE_FIELDS = ("preset", "lrs", "seeds", "log_every", "save_checkpoint", "eval_batch_size",
                "data_dir")


# ---- parsing what the command line gives ------------------------------------------------

def parse_tasks(spec: str) -> list[str]:
    """`"all"` (the nine GLUE tasks) or a comma list of task names -> canonical names."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError("--task is empty: give a task (e.g. RTE), a comma list, or all")
    out: list[str] = []
    for name in names:
        tasks = GLUE_TASKS if name.lower() == "all" else (get_task(name).name,)
        for task in tasks:
            if TASKS[task].train_split is None:
                raise UserError(f"{task} has no training data: it is predicted by the MNLI "
                                "model; add MNLI and --predict-test")
            if task not in out:
                out.append(task)
    return out


def _parse_list(text: str, flag: str, convert, kind: str, example: str, check) -> tuple:
    """A comma list of `convert`-ed values, each passing `check` (which returns an error
    message or None), duplicates dropped; a bad item is a one-line UserError."""
    out: list = []
    for item in text.split(","):
        try:
            value = convert(item)
        except ValueError:
            raise UserError(f"bad {flag} {text!r}: {item.strip()!r} is not {kind} "
                            f"(write e.g. {flag} {example})") from None
        problem = check(value)
        if problem:
            raise UserError(f"bad {flag} {text!r}: {problem}")
        if value not in out:
            out.append(value)
    return tuple(out)


def parse_lrs(text: str) -> tuple[float, ...]:
    """`"2e-5,3e-5"` -> (2e-05, 3e-05): positive finite numbers, duplicates dropped."""
    return _parse_list(
        text, "--lrs", float, "a number", "2e-5,3e-5",
        lambda lr: None if math.isfinite(lr) and lr > 0
        else f"a learning rate must be positive, got {lr:g}")


def parse_seeds(text: str) -> tuple[int, ...]:
    """`"1,2,3"` -> (1, 2, 3): non-negative integers, duplicates dropped."""
    return _parse_list(text, "--seeds", int, "an integer", "1,2,3",
                       lambda seed: None if seed >= 0 else f"a seed must be >= 0, got {seed}")


def check_config(config: ml_collections.ConfigDict) -> None:
    """The sizes a sweep divides by or loops over: each must be positive (a batch size
    of 0 divided by zero; a negative one looped forever)."""
    for field in ("batch_size", "eval_batch_size", "max_seq_length", "epochs", "log_every",
                  "packing_slots"):
        value = config.get(field)
        if value is not None and not value > 0:
            raise UserError(f"--config.{field}={value}: must be greater than 0")
    if not 0 <= config.warmup_proportion <= 1:
        raise UserError(f"--config.warmup_proportion={config.warmup_proportion}: must be "
                        "between 0 and 1")
    if config.train_limit < 0:
        raise UserError(f"--config.train_limit={config.train_limit}: must be 0 (all) or more")


def run_dir(workdir: str | Path, task: str, lr: float, seed: int) -> Path:
    """`<workdir>/<task>/lr<lr>_seed<seed>`, e.g. runs/glue/RTE/lr2e-05_seed1."""
    return Path(workdir) / get_task(task).name / f"lr{lr:g}_seed{seed}"


# ---- the sweep --------------------------------------------------------------------------

def sweep(config: ml_collections.ConfigDict, tasks: Sequence[str], model: str,
          data_dir: str | Path, workdir: str | Path, *, lrs: Sequence[float] | None = None,
          seeds: Sequence[int] | None = None, predict_test: bool = False,
          export: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tunes `model` on every task x lr x seed (skipping finished runs) and returns
    the summary it also writes to `<workdir>/summary.json` (see the module docstring).

    `lrs`/`seeds` default to the config's. `export`: a directory that receives each task's
    best run as an HF BertForSequenceClassification directory (`<export>/<task>/`).
    """
    from bert_jax.glue import classifier, finetune

    check_config(config)
    tasks = [get_task(t).name for t in tasks]
    lrs = tuple(float(x) for x in (config.lrs if lrs is None else lrs))
    seeds = tuple(int(x) for x in (config.seeds if seeds is None else seeds))
    if not tasks or not lrs or not seeds:
        raise UserError("nothing to run: give at least one task, learning rate and seed")
    workdir, data_dir = Path(workdir), Path(data_dir)
    # The runs' config: a copy with what the sweep adds; the caller's is not written into.
    config = ml_collections.ConfigDict(config.to_dict())
    # A local model is recorded by its absolute path, so a rerun from another directory
    # is recognised as the same sweep.
    config.model_name = str(Path(model).resolve()) if Path(model).exists() else str(model)
    config.data_dir = str(data_dir.resolve())
    if export is not None:
        config.save_checkpoint = True  # the export is made from the best run's checkpoint

    # Every file a task needs, checked before any training: a typo in the fifth task
    # fails now, not an hour in.
    for name in tasks:
        task = TASKS[name]
        needed = [task.train_split, *task.dev_splits]
        needed += list(task.test_splits) if predict_test else []
        for split in needed:
            split_path(task, data_dir, split)

    workdir.mkdir(parents=True, exist_ok=True)
    pretrained = None
    per_task: dict[str, dict[str, Any]] = {}
    for name in tasks:
        data = None
        runs = []
        for lr in lrs:
            for seed in seeds:
                d = run_dir(workdir, name, lr, seed)
                results = _finished(d, config, predict_test)
                if results is not None:
                    log.info("%s lr=%g seed=%d: done already (%s)", name, lr, seed, d)
                else:
                    if pretrained is None:
                        pretrained = _load_model(model, config)
                    if data is None:
                        data = load_task_data(
                            name, data_dir, pretrained.tokenizer,
                            max_length=config.max_seq_length, train_limit=config.train_limit,
                            predict_test=predict_test)
                    results = finetune.finetune(config, name, pretrained, data, d, lr=lr,
                                                seed=seed, predict_test=predict_test,
                                                progress=progress)
                    log.info("%s lr=%g seed=%d: %s (%.0f s)", name, lr, seed,
                             reports.format_metrics(results["metrics"]), results["wall_seconds"])
                runs.append({**results, "dir": str(d.relative_to(workdir))})
        per_task[name] = reports.summarize_task(name, runs, lrs)

    summary: dict[str, Any] = {
        "model": config.model_name, "data_dir": config.data_dir, "lrs": list(lrs),
        "seeds": list(seeds), "config": json.loads(config.to_json_best_effort()),
        "tasks": per_task, "glue_score": None}
    if all(t in per_task for t in GLUE_TASKS):
        summary["glue_score"] = glue_metrics.glue_score(
            {t: {m: v["mean"] for m, v in s["metrics"].items()} for t, s in per_task.items()})
    if predict_test:
        summary["submission"] = str(write_submission(summary, workdir))
    if export is not None:
        summary["export"] = {
            t: str(classifier.export_run(workdir / s["best_run"], Path(export) / t))
            for t, s in per_task.items()}
    reports.write_reports(summary, workdir)
    return summary


def _load_model(model: str, config: ml_collections.ConfigDict):
    from bert_jax import weights

    # The encoder only: each run draws its own classifier from its seed (init_classifier).
    pretrained = weights.load_pretrained(model, "encoder")
    if pretrained.tokenizer is None:
        raise UserError(f"{model} has no vocab.txt or tokenizer.json beside the weights: "
                        "fine-tuning needs the model's tokenizer")
    limit = pretrained.config.max_position_embeddings
    if config.max_seq_length > limit:
        raise UserError(f"max_seq_length {config.max_seq_length} exceeds the model's "
                        f"{limit} positions: set --config.max_seq_length={limit} or less")
    return pretrained


def _recipe(config: Any, model_fields: Sequence[str]) -> dict[str, Any]:
    """The fields that determine what a run computes, JSON-normalised (tuples -> lists).

    A run saves its whole model config under `model`; of it, the fields the sweep's
    config sets (`model_fields`) are the recipe's, as `model.<field>`."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    d = json.loads(json.dumps(d, default=str))
    recipe = {k: v for k, v in d.items()
              if k not in _FREE_FIELDS and k not in ("task", "lr", "seed", "model")}
    model = d.get("model") or {}
    return recipe | {f"model.{k}": model.get(k) for k in model_fields}


def _finished(d: Path, config: ml_collections.ConfigDict,
              predict_test: bool) -> dict[str, Any] | None:
    """The results of a finished run in `d` that this sweep can use, else None (redo it)."""
    run = RunDir(d)
    results = run.read_results()
    if results is None:
        return None
    try:
        saved = json.loads(run.config.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    fields = tuple(config.model)
    saved, current = _recipe(saved, fields), _recipe(config, fields)
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise UserError(
                f"{d} was run with {key}={saved.get(key)!r}, this sweep has "
                f"{current.get(key)!r}: use another --workdir, or delete {d} to redo it")
    if predict_test and not run.test_predictions.exists():
        log.info("%s: finished without test predictions; running it again", d)
        return None
    if config.save_checkpoint and not run.has_checkpoints():
        log.info("%s: finished without a checkpoint; running it again", d)
        return None
    return results
