"""A fine-tuned classifier: its predictions, and loading, exporting and using a saved one.

    task, model = classifier.load_classifier("runs/glue/RTE/lr2e-05_seed1")  # or an export
    x = features.featurize(examples, model.tokenizer)
    logits = classifier.classify(model, x)              # [N, num_labels]
    logits = classifier.classify(model, x, packing=True)  # the same, several examples a row
    classifier.to_predictions(task, logits)           # label indices (scores for STS-B)
    classifier.export_run("runs/glue/RTE/lr2e-05_seed1", "export/RTE")  # HF safetensors

A run directory holds a fine-tuned model when it was made with config.save_checkpoint
(`bert-jax glue --export` sets it); `export_run` writes it as a directory that
`transformers.BertForSequenceClassification.from_pretrained` loads, labels named.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bert_jax import files, sharding, weights
from bert_jax import model as model_lib
from bert_jax.config import BertConfig
from bert_jax.errors import UserError
from bert_jax.glue import packed as packed_lib
from bert_jax.glue.features import FEATURE_KEYS, batches
from bert_jax.glue.tasks import TaskSpec, get_task
from bert_jax.runs import RunDir
from bert_jax.tokenizer import Tokenizer
from bert_jax.train import objectives


def to_predictions(task: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Logits -> label indices, or scores clipped to [0, 5] for regression (STS-B)."""
    if task.labels is None:
        return np.clip(logits[:, 0], 0.0, 5.0)
    return logits.argmax(-1)


def make_predict(objective: objectives.Classification, param_shardings: Any, mesh: Any):
    """`(params, batch) -> logits`, compiled once per batch shape."""
    return jax.jit(lambda params, batch: objective.predict(params, batch),
                   in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))


def predict_all(predict, params: Any, features: dict[str, np.ndarray], mesh: Any,
                batch_size: int, buckets: tuple[int, ...] = (), *,
                packing_slots: int = 0) -> np.ndarray:
    """Logits for every example, in order (padding rows dropped): batches of
    `batch_size` examples, each cut to a length bucket, or with `packing_slots` > 0 the
    examples packed, at most that many a row (`glue/packed.py`), `batch_size` rows a
    batch."""
    n = len(features["input_ids"])
    if not n:
        return np.zeros((0, 1))
    dp = sharding.data_parallel_size(mesh)
    size = int(math.ceil(batch_size / dp)) * dp
    inputs = {k: features[k] for k in FEATURE_KEYS}
    if packing_slots:
        packed = packed_lib.pack_features(inputs, packing_slots)
        chunks = packed_lib.row_batches(packed, size,
                                        multiple=packed_lib.row_multiple(size, dp))
    else:
        chunks = batches(inputs, size, buckets=buckets)
    out = []
    for batch in chunks:
        keep = batch.pop("example_weight") > 0
        logits = np.asarray(predict(params, sharding.global_batch(batch, mesh)))
        out.append(logits[keep])
    logits = np.concatenate(out)
    return (packed.unpack(logits) if packing_slots else logits[:n]).astype(np.float32)


def is_run_dir(path: str | Path) -> bool:
    """A fine-tuning run directory that kept its weights (config.save_checkpoint)."""
    return "task" in (weights.workdir_config(path) or {})


def load_run(run_dir: str | Path) -> tuple[TaskSpec, weights.Pretrained]:
    """The task and fine-tuned model of a run saved with config.save_checkpoint."""
    from bert_jax import checkpoint

    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not a fine-tuning run with a checkpoint: run "
                        "`bert-jax glue` with --config.save_checkpoint=True (or --export)")
    run = RunDir(run_dir)
    saved = run.saved_config()
    task = get_task(saved["task"])
    config = run.model_config(saved)
    params, _ = checkpoint.restore_params(run.checkpoints)
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
                    ) -> tuple[TaskSpec, weights.Pretrained]:
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
        model_task = get_task(hf["finetuning_task"]) if hf.get("finetuning_task") else None
    chosen = get_task(task) if task else model_task
    if chosen is None:
        raise UserError(f"{name_or_path} does not say which GLUE task it was fine-tuned on: "
                        "pass --task")
    if chosen.train_split is None:  # AX: the MNLI model predicts it, with MNLI's labels
        chosen = get_task("MNLI")
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
             batch_size: int = 64, buckets: tuple[int, ...] = (32, 64, 128),
             packing: bool = False, packing_slots: int = packed_lib.DEFAULT_SLOTS
             ) -> np.ndarray:
    """Logits [N, num_labels] of a loaded classification model for featurized inputs.

    `packing`: several examples per row, at most `packing_slots` (`glue/packed.py`), in
    batches of `batch_size` rows as long as the features; the same logits to float
    rounding."""
    mesh = sharding.make_mesh((-1, 1, 1))
    predict = _classify_program(model.config, mesh)
    return predict_all(predict, model.params, features, mesh, batch_size, buckets,
                       packing_slots=packing_slots if packing else 0)


@functools.lru_cache(maxsize=4)
def _classify_program(mcfg: BertConfig, mesh: Any):
    """`classify`'s jitted forward, kept: predicting again compiles nothing new."""
    objective = objectives.Classification(model_lib.build(mcfg, "classification"))
    return make_predict(objective, sharding.replicated(mesh), mesh)
