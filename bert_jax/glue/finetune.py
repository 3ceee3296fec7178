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
                 (`classifier.load_run`, `export_run`, `bert-jax predict --model RUN_DIR`)
The classifier head is initialised from the run's seed, so seeds differ in both
initialisation and data order, as in the original. With config.packing the same batches
are packed, several examples a row, and so are dev and test (`glue/packed.py`).

`features.load_task_data` reads and featurizes what a run needs; the sweep over learning
rates and seeds lives in `sweep`, the summary in `reports`, a saved run's use in `classifier`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from bert_jax import configlib, files, optim, sharding
from bert_jax import model as model_lib
from bert_jax.config import BertConfig
from bert_jax.errors import UserError
from bert_jax.glue import metrics as glue_metrics
from bert_jax.glue import packed
from bert_jax.glue.classifier import make_predict, predict_all, to_predictions
from bert_jax.glue.features import AX_KEY, FEATURE_KEYS, batches
from bert_jax.glue.tasks import get_task
from bert_jax.runs import RunDir
from bert_jax.train import objectives
from bert_jax.train import programs as programs_lib
from bert_jax.train.writer import MetricWriter


def finetune(config: ml_collections.ConfigDict, task_name: str, pretrained: Any,
             data: dict[str, dict[str, np.ndarray]], workdir: str | Path, *, lr: float,
             seed: int, predict_test: bool = False, progress: bool = True) -> dict[str, Any]:
    """One fine-tuning run of `pretrained` (a `weights.Pretrained` encoder) into `workdir`.

    `data` maps split name -> featurized arrays (`load_task_data`). Returns the results
    it writes to results.json: dev metrics per split, `metrics` (all of them),
    `main_metric`, steps and seconds.
    """
    task = get_task(task_name)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = RunDir(workdir)
    # A run without results.json is unfinished: it starts over, so drop what it left.
    run.clear_unfinished()

    # The architecture is the pre-trained model's; the config's model section sets its
    # numerics and dropout.
    mcfg = pretrained.config.replace(num_labels=task.num_labels, **config.model.to_dict())
    run_config = ml_collections.ConfigDict(config.to_dict())
    run_config.task, run_config.lr, run_config.seed = task.name, float(lr), int(seed)
    run_config.model = ml_collections.ConfigDict(dataclasses.asdict(mcfg))
    configlib.save(run_config, workdir)

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
    mesh, rules = programs_lib.mesh_from_config(config.mesh)
    sharding.check_batch(config.batch_size, mesh)
    programs, predict = _programs(mcfg, json.dumps(ocfg.to_dict(), sort_keys=True), total,
                                  mesh, rules)
    train_step, schedule = programs.train_step, programs.schedule
    state = programs.init_state(seed, params=init_classifier(programs.module,
                                                             pretrained.params, seed))

    writer = MetricWriter(workdir, tensorboard=False)
    start = time.perf_counter()
    step, losses, finite = 0, [], []
    bar = tqdm(total=total, desc=f"{task.name} lr={lr:g} seed={seed}", unit="step",
               disable=not progress, leave=False, dynamic_ncols=True)
    epoch = 0
    while step < total:
        for batch in train_batches(train, config, seed * 1000 + epoch, mesh):
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
    slots = config.packing_slots if config.packing else 0  # evaluation packs as training
    for split in task.dev_splits:
        logits = predict_all(predict, state.params, data[split], mesh,
                             config.eval_batch_size, tuple(config.length_buckets),
                             packing_slots=slots)
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
                                     config.eval_batch_size, tuple(config.length_buckets),
                                     packing_slots=slots)
                tests.append({"task": name, "split": split, "index": data[key]["guid"].tolist(),
                              "prediction": to_predictions(task, logits).tolist()})
        files.write_text_atomic(run.test_predictions, json.dumps(tests))
    if config.save_checkpoint:
        from bert_jax import checkpoint
        ckpt = checkpoint.Checkpointer(run.checkpoints, keep=1)
        ckpt.save(total, state, {"task": task.name})
        ckpt.close()
        if pretrained.tokenizer is not None:  # the run directory is then a whole model
            pretrained.tokenizer.save(workdir)
        results["checkpoint"] = run.checkpoints.name
    results["wall_seconds"] = time.perf_counter() - start
    # Atomic: a finished run is never half-written (its presence marks the run done).
    files.write_json_atomic(run.results, results)
    return results


def train_batches(train: dict[str, np.ndarray], config: ml_collections.ConfigDict, seed: int,
                  mesh: Any) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of training batches of `config.batch_size` examples in `seed`'s order:
    cut to length buckets, or packed with `config.packing` (`glue/packed.py`)."""
    if config.packing:
        multiple = packed.row_multiple(config.batch_size, sharding.data_parallel_size(mesh))
        return packed.train_batches(train, config.batch_size, slots=config.packing_slots,
                                    seed=seed, multiple=multiple)
    return batches(train, config.batch_size, buckets=tuple(config.length_buckets), seed=seed,
                   drop_remainder=True)


@functools.lru_cache(maxsize=8)
def _programs(mcfg: BertConfig, optimizer_json: str, total: int, mesh: Any,
              rules: sharding.Rules) -> tuple[programs_lib.Programs, Any]:
    """The programs (train step, state layout) and the jitted predict of a run.

    Cached on everything they depend on (the seed is not among it), so the seeds of one
    learning rate, and the runs a resumed sweep redoes, reuse the compilations.
    """
    optimizer, schedule = optim.build(ml_collections.ConfigDict(json.loads(optimizer_json)),
                                      total)
    programs = programs_lib.build(mcfg, "classification", objectives.Classification,
                                  optimizer, schedule, mesh, rules)
    return programs, make_predict(programs.objective, programs.state_shardings.params, mesh)


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
