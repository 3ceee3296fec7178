"""GLUE fine-tuning: one run (task, learning rate, seed), on the shared train step.

`finetune(...)` trains BertForSequenceClassification from pre-trained weights with the
run_classifier recipe (configs/glue.py), evaluates on dev with the official metrics,
and optionally predicts the test split. It writes into its own directory:
  config.json    the resolved config of the run (task, lr, seed included)
  metrics.jsonl  train loss every log_every steps, then the dev metrics ("eval")
  results.json   dev metrics, steps, wall-clock (written last: its presence = done)
  test_predictions.json   with predict_test: [{task, split, index, prediction}, ...]
                 (the MNLI run also predicts AX when its data is given as `AX_KEY`)
  checkpoints/, vocab.txt, tokenizer.json   with config.save_checkpoint: the fine-tuned
                 state (orbax) and the tokenizer, so the run directory is a usable model
                 (`load_run`, `export_run`, `bert-jax predict --model RUN_DIR`)
The classifier head is initialised from the run's seed, so seeds differ in both
initialisation and data order, as in the original.

`load_task_data` reads and featurizes what a run needs; the sweep over learning rates and
seeds, and the summary, live in `glue_sweep`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from bert_jax import configlib, files, glue_metrics, optim, sharding, weights
from bert_jax import model as model_lib
from bert_jax.config import BertConfig
from bert_jax.data import glue
from bert_jax.errors import UserError
from bert_jax.tokenizer import Tokenizer
from bert_jax.train import objectives
from bert_jax.train import state as state_lib
from bert_jax.train import step as step_lib
from bert_jax.train.writer import MetricWriter

FEATURE_KEYS = ("input_ids", "token_type_ids", "attention_mask")
# The data key of the diagnostic set, which the MNLI model predicts (test only).
AX_KEY = "AX:test"


def load_task_data(task: str | glue.TaskSpec, data_dir: str | Path, tokenizer: Tokenizer, *,
                   max_length: int, train_limit: int = 0, predict_test: bool = False
                   ) -> dict[str, dict[str, np.ndarray]]:
    """Split name -> featurized arrays (plus `guid`, the file's ids) for one task's run.

    Train (its first `train_limit` examples if > 0) and the dev splits always; with
    `predict_test` the test splits, and for MNLI the AX set when `data_dir` holds it.
    """
    task = glue.get_task(task)
    splits = [task.train_split, *task.dev_splits]
    if predict_test:
        splits += list(task.test_splits)
    data = {}
    for split in splits:
        examples = glue.read_split(task, data_dir, split)
        if split == task.train_split and train_limit > 0:
            examples = examples[:train_limit]
        data[split] = _featurize(examples, tokenizer, max_length)
    if predict_test and task.name == "MNLI" and glue.has_split("AX", data_dir, "test"):
        data[AX_KEY] = _featurize(glue.read_split("AX", data_dir, "test"), tokenizer, max_length)
    return data


def _featurize(examples: list[glue.Example], tokenizer: Tokenizer,
               max_length: int) -> dict[str, np.ndarray]:
    features = glue.featurize(examples, tokenizer, max_length)
    features["guid"] = np.asarray([e.guid for e in examples], dtype=object)
    return features


def batches(features: dict[str, np.ndarray], batch_size: int, *,
            buckets: tuple[int, ...] = (), seed: int | None = None,
            drop_remainder: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `features`, in a seeded random order (seed given) or in order.

    Each batch is cut to the smallest length bucket holding its longest example (one
    compilation per bucket). A ragged last batch is padded with zero-weight rows
    (`example_weight`) unless dropped, so shapes stay in the known set.
    """
    n = len(features["input_ids"])
    order = np.random.default_rng(seed).permutation(n) if seed is not None else np.arange(n)
    lengths = features["attention_mask"].sum(axis=1)
    full = features["input_ids"].shape[1]
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        if len(rows) < batch_size and drop_remainder:
            return
        width = next((b for b in sorted(buckets) if b >= lengths[rows].max()), full)
        weight = np.ones(batch_size, np.float32)
        if len(rows) < batch_size:
            weight[len(rows):] = 0.0
            rows = np.concatenate([rows, np.full(batch_size - len(rows), rows[0])])
        batch = {k: v[rows, :width] if k in FEATURE_KEYS else v[rows]
                 for k, v in features.items()}
        batch["example_weight"] = weight
        yield batch


def to_predictions(task: glue.TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Logits -> label indices, or scores clipped to [0, 5] for regression (STS-B)."""
    if task.labels is None:
        return np.clip(logits[:, 0], 0.0, 5.0)
    return logits.argmax(-1)


def finetune(config: ml_collections.ConfigDict, task_name: str, pretrained: Any,
             data: dict[str, dict[str, np.ndarray]], workdir: str | Path, *, lr: float,
             seed: int, predict_test: bool = False, progress: bool = True) -> dict[str, Any]:
    """One fine-tuning run of `pretrained` (a `weights.Pretrained` encoder) into `workdir`.

    `data` maps split name -> featurized arrays (`load_task_data`). Returns the results
    it writes to results.json: dev metrics per split, `metrics` (all of them),
    `main_metric`, steps and seconds.
    """
    task = glue.get_task(task_name)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # A run without results.json is unfinished: it starts over, so drop what it left.
    for stale in ("metrics.jsonl", "test_predictions.json"):
        (workdir / stale).unlink(missing_ok=True)
    if (workdir / "checkpoints").exists():
        shutil.rmtree(workdir / "checkpoints")

    mcfg = pretrained.config.replace(
        num_labels=task.num_labels, dtype=config.dtype, hidden_dropout_prob=config.dropout)
    run_config = ml_collections.ConfigDict(config.to_dict())
    run_config.task, run_config.lr, run_config.seed = task.name, float(lr), int(seed)
    run_config.model = ml_collections.ConfigDict(dataclasses.asdict(mcfg))
    configlib.save(run_config, workdir)

    module = model_lib.build(mcfg, "classification")
    params = init_classifier(module, pretrained.params, seed)

    train = {k: v for k, v in data[task.train_split].items() if k in (*FEATURE_KEYS, "labels")}
    n_train = len(train["input_ids"])
    if n_train < config.batch_size:
        raise UserError(f"{task.name} has {n_train} training examples, fewer than one batch "
                        f"({config.batch_size}); lower --config.batch_size")
    steps_per_epoch = n_train // config.batch_size  # the last partial batch is dropped
    total = max(1, int(steps_per_epoch * config.epochs))
    ocfg = ml_collections.ConfigDict(config.optimizer.to_dict())
    ocfg.lr = float(lr)
    ocfg.warmup_steps = int(total * config.warmup_proportion)
    mesh = sharding.make_mesh((-1, 1, 1))
    sharding.check_batch(config.batch_size, mesh)
    optimizer, schedule, shardings, train_step, predict = _programs(
        mcfg, json.dumps(ocfg.to_dict(), sort_keys=True), total, mesh)
    state = state_lib.init_state(module, optimizer, mesh, seed, params=params)

    writer = MetricWriter(workdir, tensorboard=False)
    start = time.perf_counter()
    step, losses, finite = 0, [], []
    bar = tqdm(total=total, desc=f"{task.name} lr={lr:g} seed={seed}", unit="step",
               disable=not progress, leave=False, dynamic_ncols=True)
    epoch = 0
    while step < total:
        for batch in batches(train, config.batch_size, buckets=tuple(config.length_buckets),
                             seed=seed * 1000 + epoch, drop_remainder=True):
            state, metrics = train_step(state, sharding.global_batch(batch, mesh))
            losses.append(metrics["loss"])
            finite.append(metrics["finite"])
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == total:
                loss = float(np.mean(jax.device_get(losses)))
                losses = []
                writer.write(step, "train", {"loss": loss, "lr": float(schedule(step - 1))})
                bar.set_postfix(loss=f"{loss:.4f}")
            if step == total:
                break
        epoch += 1
    bar.close()
    train_seconds = time.perf_counter() - start

    results: dict[str, Any] = {
        "task": task.name, "lr": float(lr), "seed": int(seed), "steps": total,
        "train_examples": n_train, "train_seconds": train_seconds,
        # The train step skips a non-finite update (keeps the old params): count them.
        "nonfinite_steps": int(total - np.sum(jax.device_get(finite)))}
    metrics: dict[str, float] = {}
    for split in task.dev_splits:
        logits = predict_all(predict, state.params, data[split], mesh,
                             config.eval_batch_size, tuple(config.length_buckets))
        preds = to_predictions(task, logits)
        results[split] = glue_metrics.compute(task.name, preds, data[split]["labels"],
                                              split=split)
        metrics |= results[split]
    results["metrics"] = metrics
    results["main_metric"] = glue_metrics.main_metric(task.name, metrics)
    writer.write(total, "eval", {**metrics, "main_metric": results["main_metric"]})
    writer.close()
    if predict_test:
        tests = []
        targets = [(task.name, split, split) for split in task.test_splits]
        targets += [("AX", "test", AX_KEY)] if task.name == "MNLI" else []
        for name, split, key in targets:
            if key in data:
                logits = predict_all(predict, state.params, data[key], mesh,
                                     config.eval_batch_size, tuple(config.length_buckets))
                tests.append({"task": name, "split": split, "index": data[key]["guid"].tolist(),
                              "prediction": to_predictions(task, logits).tolist()})
        files.write_text_atomic(workdir / "test_predictions.json", json.dumps(tests))
    if config.save_checkpoint:
        from bert_jax import checkpoint
        ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=1)
        ckpt.save(total, state, {"task": task.name})
        ckpt.close()
        if pretrained.tokenizer is not None:  # the run directory is then a whole model
            pretrained.tokenizer.save(workdir)
        results["checkpoint"] = "checkpoints"
    results["wall_seconds"] = time.perf_counter() - start
    # Atomic: a finished run is never half-written (its presence marks the run done).
    files.write_json_atomic(workdir / "results.json", results)
    return results


@functools.lru_cache(maxsize=8)
def _programs(mcfg: BertConfig, optimizer_json: str, total: int, mesh: Any) -> tuple:
    """Optimizer, schedule, state shardings, and the jitted train step and predict of a run.

    Cached on everything they depend on (the seed is not among it), so the seeds of one
    learning rate, and the runs a resumed sweep redoes, reuse the compilations.
    """
    module = model_lib.build(mcfg, "classification")
    optimizer, schedule = optim.build(ml_collections.ConfigDict(json.loads(optimizer_json)),
                                      total)
    shardings = state_lib.state_shardings(module, optimizer, mesh)
    objective = objectives.Classification(module)
    train_step = step_lib.jit_train_step(
        step_lib.make_train_step(objective, optimizer, schedule), shardings, mesh)
    return optimizer, schedule, shardings, train_step, make_predict(
        objective, shardings.params, mesh)


@functools.lru_cache(maxsize=8)
def _init_fn(mcfg: BertConfig):
    """The model's random initialisation, jitted: one compilation instead of an eager
    dispatch (and compilation) of every initializer op."""
    module = model_lib.build(mcfg, "classification")
    return jax.jit(lambda key: model_lib.init_params(module, key))


def init_classifier(module: Any, pretrained_params: dict[str, Any], seed: int) -> dict:
    """The pre-trained encoder plus a classifier head drawn from `seed`."""
    fresh = _init_fn(module.config)(jax.random.key(seed))
    encoder = pretrained_params.get("bert", pretrained_params)
    missing = set(fresh["bert"]) - set(encoder)
    if missing:
        raise ValueError(f"pre-trained parameters lack {sorted(missing)}")
    return {"bert": {k: encoder[k] for k in fresh["bert"]}, "classifier": fresh["classifier"]}


def make_predict(objective: objectives.Classification, param_shardings: Any, mesh: Any):
    """`(params, batch) -> logits`, compiled once per batch shape."""
    return jax.jit(lambda params, batch: objective.predict(params, batch),
                   in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))


def predict_all(predict, params: Any, features: dict[str, np.ndarray], mesh: Any,
                batch_size: int, buckets: tuple[int, ...] = ()) -> np.ndarray:
    """Logits for every example, in order (padding rows dropped)."""
    n = len(features["input_ids"])
    dp = sharding.data_parallel_size(mesh)
    size = int(math.ceil(batch_size / dp)) * dp
    out = []
    inputs = {k: features[k] for k in FEATURE_KEYS}
    for batch in batches(inputs, size, buckets=buckets):
        keep = batch.pop("example_weight") > 0
        logits = np.asarray(predict(params, sharding.global_batch(batch, mesh)))
        out.append(logits[keep])
    return np.concatenate(out)[:n].astype(np.float32) if out else np.zeros((0, 1))


# ---- a fine-tuned model: load, export, predict -------------------------------------------

def is_run_dir(path: str | Path) -> bool:
    """A fine-tuning run directory that kept its weights (config.save_checkpoint)."""
    return "task" in (weights.workdir_config(path) or {})


def load_run(run_dir: str | Path) -> tuple[glue.TaskSpec, weights.Pretrained]:
    """The task and fine-tuned model of a run saved with config.save_checkpoint."""
    from bert_jax import checkpoint

    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not a fine-tuning run with a checkpoint: run "
                        "`bert-jax glue` with --config.save_checkpoint=True (or --export)")
    saved = configlib.load_saved(run_dir)
    task = glue.get_task(saved.task)
    try:
        config = BertConfig(**saved.model.to_dict())
    except (TypeError, ValueError) as e:
        raise UserError(f"{run_dir}/config.json: bad model config: {e}") from None
    params, _ = checkpoint.restore_params(run_dir / "checkpoints")
    tokenizer = None
    if (run_dir / "tokenizer.json").exists() or (run_dir / "vocab.txt").exists():
        tokenizer = Tokenizer.from_dir(run_dir)
    report = weights.LoadReport(source=str(run_dir), format="bert-jax checkpoint",
                                head="classification",
                                loaded=len(jax.tree_util.tree_leaves(params)))
    return task, weights.Pretrained(config, params, tokenizer, report, "classification")


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Writes a run's fine-tuned model as an HF directory that
    `transformers.BertForSequenceClassification.from_pretrained` loads, labels named."""
    task, model = load_run(run_dir)
    if model.tokenizer is None:
        raise UserError(f"{run_dir} has no vocab.txt/tokenizer.json to export with the weights")
    out = weights.save_pretrained(out_dir, model.config, model.params, model.tokenizer,
                                  head="classification")
    path = out / "config.json"
    hf = json.loads(path.read_text())
    names = task.labels if task.labels is not None else ("score",)
    # transformers reads these: label names in pipelines, MSE loss for STS-B.
    hf["id2label"] = {str(i): name for i, name in enumerate(names)}
    hf["label2id"] = {name: i for i, name in enumerate(names)}
    hf["finetuning_task"] = task.name
    hf["problem_type"] = "regression" if task.is_regression else "single_label_classification"
    files.write_json_atomic(path, hf)
    return out


def load_classifier(name_or_path: str | Path, task: str | None = None
                    ) -> tuple[glue.TaskSpec, weights.Pretrained]:
    """A fine-tuned model (a run directory or an exported HF directory) and its task.

    The task comes from the model (`finetuning_task` of an export) unless given; the
    classifier must exist in the weights and fit the task's labels.
    """
    if is_run_dir(name_or_path):
        model_task, model = load_run(name_or_path)
    else:
        model = weights.load_pretrained(name_or_path, "classification")
        if any(n.startswith("classifier.") for n in model.report.initialized):
            raise UserError(f"{name_or_path} has no classifier weights: it is not a fine-tuned "
                            "model (export one with `bert-jax glue ... --export DIR`)")
        directory = Path(weights.locate(name_or_path).directory)
        hf = files.read_json(directory / "config.json", "model config") \
            if (directory / "config.json").exists() else {}
        model_task = glue.get_task(hf["finetuning_task"]) if hf.get("finetuning_task") else None
    chosen = glue.get_task(task) if task else model_task
    if chosen is None:
        raise UserError(f"{name_or_path} does not say which GLUE task it was fine-tuned on: "
                        "pass --task")
    if chosen.train_split is None:  # AX: the MNLI model predicts it, with MNLI's labels
        chosen = glue.get_task("MNLI")
    if model_task is not None and chosen.name != model_task.name:
        # Same label count or not, another task's classifier gives meaningless labels.
        raise UserError(f"--task {task}: {name_or_path} was fine-tuned on {model_task.name}; "
                        f"drop --task (or pass --task {model_task.name}), or use a "
                        f"{chosen.name} model")
    if model.config.num_labels != chosen.num_labels:
        raise UserError(f"{name_or_path} predicts {model.config.num_labels} labels but "
                        f"{chosen.name} has {chosen.num_labels}: wrong --task for this model")
    if model.tokenizer is None:
        raise UserError(f"{name_or_path} has no vocab.txt or tokenizer.json beside the weights")
    return chosen, model


def classify(model: weights.Pretrained, features: dict[str, np.ndarray], *,
             batch_size: int = 64, buckets: tuple[int, ...] = (32, 64, 128)) -> np.ndarray:
    """Logits [N, num_labels] of a loaded classification model for featurized inputs."""
    mesh = sharding.make_mesh((-1, 1, 1))
    predict = _classify_program(model.config, mesh)
    return predict_all(predict, model.params, features, mesh, batch_size, buckets)


@functools.lru_cache(maxsize=4)
def _classify_program(mcfg: BertConfig, mesh: Any):
    """`classify`'s jitted forward, kept: predicting again compiles nothing new."""
    objective = objectives.Classification(model_lib.build(mcfg, "classification"))
    return make_predict(objective, sharding.replicated(mesh), mesh)
