"""GLUE examples -> model inputs: tokenising, a run's data, and length-bucketed batches.

    arrays = features.featurize(examples, tokenizer, max_length=128)
    data = features.load_task_data("RTE", "glue_data", tokenizer, max_length=128)
    for batch in features.batches(data["train"], 32, buckets=(32, 64, 128), seed=1): ...

`load_task_data` maps split name -> featurized arrays (plus `guid`, the file's ids);
`batches` cuts each batch to the smallest length bucket holding its longest example, so a
run compiles one program per bucket.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bert_jax.data.padding import pad_rows
from bert_jax.errors import UserError
from bert_jax.glue.tasks import Example, TaskSpec, get_task, has_split, read_split
from bert_jax.tokenizer import Tokenizer

FEATURE_KEYS = ("input_ids", "token_type_ids", "attention_mask")
# The data key of the diagnostic set, which the MNLI model predicts (test only).
AX_KEY = "AX:test"


def load_task_data(task: str | TaskSpec, data_dir: str | Path, tokenizer: Tokenizer, *,
                   max_length: int, train_limit: int = 0, predict_test: bool = False
                   ) -> dict[str, dict[str, np.ndarray]]:
    """Split name -> featurized arrays (plus `guid`, the file's ids) for one task's run.

    Train (its first `train_limit` examples if > 0) and the dev splits always; with
    `predict_test` the test splits, and for MNLI the AX set when `data_dir` holds it.
    """
    task = get_task(task)
    splits = [task.train_split, *task.dev_splits]
    if predict_test:
        splits += list(task.test_splits)
    data = {}
    for split in splits:
        examples = read_split(task, data_dir, split)
        if split == task.train_split and train_limit > 0:
            examples = examples[:train_limit]
        data[split] = _featurize(examples, tokenizer, max_length)
    if predict_test and task.name == "MNLI" and has_split("AX", data_dir, "test"):
        data[AX_KEY] = _featurize(read_split("AX", data_dir, "test"), tokenizer, max_length)
    return data


def _featurize(examples: list[Example], tokenizer: Tokenizer,
               max_length: int) -> dict[str, np.ndarray]:
    features = featurize(examples, tokenizer, max_length)
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
    lengths = features["attention_mask"].sum(axis=1)
    full = features["input_ids"].shape[1]
    for rows in batch_rows(len(lengths), batch_size, seed=seed, drop_remainder=drop_remainder):
        width = next((b for b in sorted(buckets) if b >= lengths[rows].max()), full)
        rows, weight = pad_rows(rows, batch_size)
        batch = {k: v[rows, :width] if k in FEATURE_KEYS else v[rows]
                 for k, v in features.items()}
        batch["example_weight"] = weight
        yield batch


def batch_rows(n: int, batch_size: int, *, seed: int | None = None,
               drop_remainder: bool = False) -> Iterator[np.ndarray]:
    """The example indices of each batch of `n` examples: a seeded random order (seed
    given) or in order, cut into `batch_size` pieces (the last one shorter, or dropped).
    `batches` and the packed batches (`glue/packed.py`) take their examples from here."""
    order = np.random.default_rng(seed).permutation(n) if seed is not None else np.arange(n)
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        if len(rows) < batch_size and drop_remainder:
            return
        yield rows


def featurize(examples: Sequence[Example], tokenizer: Tokenizer,
              max_length: int = 128) -> dict[str, np.ndarray]:
    """Examples -> int32 [N, max_length] input_ids, token_type_ids, attention_mask, and
    `labels` ([N] int32, float32 for regression) when the examples are labelled.

    Pairs are `[CLS] A [SEP] B [SEP]`, truncated longest-first as run_classifier does.
    """
    if max_length < 3:
        raise UserError(f"max_length must be at least 3 ([CLS] x [SEP]), got {max_length}")
    examples = list(examples)
    paired = {e.text_b is not None for e in examples}
    if len(paired) > 1:
        raise ValueError("examples mix single sentences and pairs; featurize one task at a time")
    if examples:
        pairs = [e.text_b for e in examples] if paired == {True} else None
        out = tokenizer.encode_batch([e.text_a for e in examples], pairs,
                                     max_length=max_length, pad_to=max_length)
    else:
        out = {k: np.zeros((0, max_length), np.int32)
               for k in ("input_ids", "token_type_ids", "attention_mask")}
    labelled = {e.label is not None for e in examples}
    if labelled == {True}:
        regression = any(isinstance(e.label, float) for e in examples)
        out["labels"] = np.asarray([e.label for e in examples],
                                   np.float32 if regression else np.int32)
    elif len(labelled) > 1:
        raise ValueError("examples mix labelled and unlabelled rows")
    return out
