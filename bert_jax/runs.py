"""What a run directory holds: the one place that knows its layout.

    run = runs.RunDir("runs/demo")                 # a local path or a URL (gs://...)
    run.config, run.checkpoints, run.metrics       # config.json, checkpoints/, metrics.jsonl
    runs.RunDir("runs/glue/RTE/lr2e-05_seed1").read_results()   # results.json, or None
    run.model_config()                             # the BertConfig its config.json saved

A pre-training workdir and a fine-tuning run share the layout:
  config.json    the resolved config of the run (`configlib.save`; a "model" section with
                 every BertConfig field; a fine-tuning run adds task, lr and seed)
  checkpoints/   orbax checkpoints of the train state (checkpoint.py)
  metrics.jsonl  one JSON record per logged step (train/writer.py)
  results.json   a fine-tuning run's dev metrics, written last: its presence marks it done
  test_predictions.json   a fine-tuning run's test predictions (with --predict-test)
  tensorboard/   event files and profiler traces of a pre-training run
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

from etils import epath

from bert_jax.config import BertConfig
from bert_jax.errors import UserError
from bert_jax.paths import as_path, is_local

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
TEST_PREDICTIONS = "test_predictions.json"
TENSORBOARD = "tensorboard"


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (`path`: a local directory or a URL)."""

    path: epath.Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", as_path(path))

    @property
    def config(self) -> epath.Path:
        return self.path / CONFIG

    @property
    def checkpoints(self) -> epath.Path:
        return self.path / CHECKPOINTS

    @property
    def metrics(self) -> epath.Path:
        return self.path / METRICS

    @property
    def results(self) -> epath.Path:
        return self.path / RESULTS

    @property
    def test_predictions(self) -> epath.Path:
        return self.path / TEST_PREDICTIONS

    @property
    def tensorboard(self) -> epath.Path:
        return self.path / TENSORBOARD

    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir()

    def read_results(self) -> dict[str, Any] | None:
        """A finished run's results.json; None when it is missing or cut short."""
        try:
            return json.loads(self.results.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def clear_unfinished(self) -> None:
        """Drops what an unfinished run left (its metrics, predictions and checkpoints), so
        it starts over; config.json is rewritten by the next start."""
        for stale in (self.metrics, self.test_predictions):
            if stale.exists():
                stale.unlink()
        if self.checkpoints.exists():
            if is_local(self.path):
                shutil.rmtree(self.checkpoints)
            else:
                self.checkpoints.rmtree()

    def saved_config(self) -> dict[str, Any]:
        """config.json as a dict, its paths resolved (`configlib.read_saved`)."""
        from bert_jax import configlib

        return configlib.read_saved(self.path)

    def model_config(self, saved: dict[str, Any] | None = None, **overrides) -> BertConfig:
        """The BertConfig of the run's config.json "model" section (of `saved` if given,
        already read), with `overrides`."""
        from bert_jax import configlib

        saved = self.saved_config() if saved is None else saved
        if not isinstance(saved.get("model"), dict):
            raise UserError(f"{self.config} has no model section: not a bert-jax run's config")
        return configlib.model_config(saved["model"], source=str(self.config), **overrides)
