"""A study's results as small files meant to be committed: one per finished run, one for the study.

The study directory (corpus, data, checkpoints: gigabytes) is scratch that a new machine
does not have. What the report needs is small, so it goes into the results directory as
each run finishes (`<results>/runs/`), to be committed as it lands:
  study.json            the study config (less variants and seeds), the results of the
                        shared stages (corpus, vocab, data, baseline, budget), fingerprints
                        of the vocab and every dataset, and the seconds of every stage
                        attempted, per study directory (the `id` in its state.json)
  <variant>/seed<k>.json  one run: steps, the resolved pre-training config, the train MLM
                        loss per log, the periodic held-out evaluations, the reference
                        evaluation, the GLUE summary, the seconds of its stages
The report reads only these (experiments/report.py). A study directory that lacks a run
the records hold takes it from them (`restore`: its stages count as finished, with no
seconds of this directory), once the shared stages it made again gave the results and
fingerprints the records hold, so runs made here compare with the recorded ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import ml_collections

from bert_jax import files
from bert_jax.errors import UserError
from bert_jax.train.writer import read_metrics
from experiments import variants
from experiments.ablation import SHARED_DATA

RUN_STAGES = ("pretrain", "eval", "glue")
STUDY_FILE = "study.json"


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields in which two study configs (as JSON) differ, variants and seeds aside:
    a study may grow by variants and seeds, nothing else."""
    saved, current = dict(saved), dict(current)
    for d in (saved, current):
        d.pop("variants", None)
        d.pop("seeds", None)
    return variants.diff(ml_collections.ConfigDict(saved), ml_collections.ConfigDict(current))


def portable(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with the shared data directory written as `<shared>`: committed records
    name the same files on a machine whose checkout (and ../shared) sits elsewhere."""
    prefix = str(SHARED_DATA)

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and value.startswith(prefix):
            return "<shared>" + value[len(prefix):]
        return value

    return walk(config)


def is_run_stage(key: str) -> bool:
    return key.split("/")[0] in RUN_STAGES


def fingerprints(study_dir: Path) -> dict[str, str]:
    """sha256 of the vocab and of each dataset's metadata and shard indexes (which hold
    every shard file's sha256): equal fingerprints, equal data."""
    out = {}
    vocab = study_dir / "vocab" / "vocab.txt"
    if vocab.exists():
        out["vocab"] = hashlib.sha256(vocab.read_bytes()).hexdigest()
    for data in sorted((study_dir / "data").glob("*/metadata.json")):
        h = hashlib.sha256(data.read_bytes())
        for index in sorted(data.parent.glob("shard-*/index.json")):
            h.update(index.read_bytes())
        out[f"data/{data.parent.name}"] = h.hexdigest()
    return out


def make_run(study_dir: Path, run: str, state: Any) -> dict[str, Any]:
    """Run `run`'s record from its files in `study_dir` and its stages in `state`."""
    workdir = study_dir / run / "pretrain"
    evals = [{k: v for k, v in r.items() if k not in ("split", "time")}
             for r in read_metrics(workdir, "eval")]
    summary = json.loads((study_dir / run / "glue" / "summary.json").read_text()) \
        if state.done(f"glue/{run}") else None
    return {
        "run": run,
        "finished": max(state.data["finished"][f"{s}/{run}"]["finished"]
                        for s in RUN_STAGES if state.done(f"{s}/{run}")),
        "steps": state.result(f"pretrain/{run}")["steps"],
        "seconds": {s: state.seconds(f"{s}/{run}") for s in RUN_STAGES},
        "heldout": state.result(f"eval/{run}"),
        "glue": summary,
        "config": json.loads((workdir / "config.json").read_text()),
        "evals": evals,
        # the report's train curve needs only the MLM loss of each log
        "train": [{"step": r["step"], "masked_lm_loss": r["masked_lm_loss"]}
                  for r in read_metrics(workdir, "train") if "masked_lm_loss" in r],
    }


def _dumps(record: dict[str, Any]) -> str:
    """JSON with one line per top-level field and one per point of a list (a curve)."""
    lines = []
    for key, value in record.items():
        if isinstance(value, list) and value:
            points = ",\n".join("  " + json.dumps(v) for v in value)
            lines.append(f"{json.dumps(key)}: [\n{points}\n]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


class Records:
    """The records under `root` (`<results>/runs`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, run: str) -> Path:
        return self.root / f"{run}.json"

    def run(self, run: str) -> dict[str, Any] | None:
        path = self.path(run)
        return json.loads(path.read_text()) if path.exists() else None

    def seeds(self, variant: str) -> list[int]:
        """The pre-training seeds of `variant` with a record."""
        return sorted(int(p.stem[len("seed"):]) for p in (self.root / variant).glob("seed*.json")
                      if p.stem[len("seed"):].isdigit())

    def save_run(self, record: dict[str, Any]) -> None:
        files.write_text_atomic(self.path(record["run"]), _dumps(record))

    def study(self) -> dict[str, Any] | None:
        path = self.root / STUDY_FILE
        return json.loads(path.read_text()) if path.exists() else None

    def sync_study(self, config: dict[str, Any], state: Any, study_dir: Path) -> bool:
        """Checks that the study directory's config, shared results and fingerprints agree
        with the recorded ones (UserError naming what differs), then records its own (new
        datasets, this directory's seconds). Returns whether that changed the record."""
        shared = {k: v["result"] for k, v in state.data["finished"].items()
                  if not is_run_stage(k)}
        prints = fingerprints(study_dir)
        saved = self.study() or {"config": portable(config), "shared": {},
                                 "fingerprints": {}, "seconds": {}}
        changed = self.config_changes(config)
        changed += [k for k in sorted(shared.keys() & saved["shared"].keys())
                    if shared[k] != saved["shared"][k]]
        changed += [f"{k} (sha256)" for k in sorted(prints.keys() & saved["fingerprints"].keys())
                    if prints[k] != saved["fingerprints"][k]]
        if changed:
            raise UserError(f"the records in {self.root} come from a study with other "
                            f"settings or data ({', '.join(changed)}); use another --results, "
                            "or the settings and data they were made with")
        before = json.dumps(saved, sort_keys=True)
        saved["shared"] = {**saved["shared"], **shared}
        saved["fingerprints"] = {**saved["fingerprints"], **prints}
        saved["seconds"][state.id] = dict(state.data["seconds"])
        if json.dumps(saved, sort_keys=True) == before and (self.root / STUDY_FILE).exists():
            return False
        files.write_json_atomic(self.root / STUDY_FILE, saved)
        return True

    def config_changes(self, config: dict[str, Any]) -> list[str]:
        """The fields in which the study `config` (JSON) differs from the recorded one."""
        saved = self.study()
        return [] if saved is None else config_changes(saved["config"], portable(config))

    def restore_budget(self, config: dict[str, Any], state: Any) -> None:
        """The recorded step count into a `state` without one, if the records are of this
        `config`: a budget in minutes was timed on the machine that made the records, and
        every run must get the same steps."""
        saved = self.study()
        if (saved and "budget" in saved["shared"] and not state.done("budget")
                and not self.config_changes(config)):
            state.data["finished"]["budget"] = {
                "seconds": 0.0, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "result": saved["shared"]["budget"], "restored": str(self.root / STUDY_FILE)}
            state.save()

    def restore(self, state: Any, runs: list[str], glue: bool) -> list[str]:
        """Marks the stages of each recorded run in `runs` as finished in `state` where
        `state` lacks them (a run whose record lacks GLUE is not taken when `glue`).
        Returns the runs taken."""
        taken = []
        for run in runs:
            if state.done(f"eval/{run}") or state.data["seconds"].get(f"pretrain/{run}"):
                continue  # this directory has (part of) it: its files win
            record = self.run(run)
            if record is None or (glue and record["glue"] is None):
                continue
            results = {"pretrain": {"steps": record["steps"]}, "eval": record["heldout"],
                       "glue": None if record["glue"] is None
                       else sorted(glue_tasks(record["glue"]))}
            for stage in RUN_STAGES:
                if stage == "glue" and record["glue"] is None:
                    continue
                state.data["finished"][f"{stage}/{run}"] = {
                    "seconds": 0.0, "finished": record["finished"],
                    "result": results[stage], "restored": str(self.path(run))}
            taken.append(run)
        if taken:
            state.save()
        return taken


def glue_tasks(summary: dict[str, Any]) -> dict[str, Any]:
    """Per-task entries of a `bert-jax glue` summary.json (`{"tasks": {...}, ...}`)."""
    return summary.get("tasks", summary) if isinstance(summary.get("tasks"), dict) else summary


def hours_by_kind(seconds: dict[str, dict[str, float]]) -> dict[str, float]:
    """Hours per kind of stage (`pretrain`, `glue`, ...: a key's first part), summed over
    the study directories (`{id: {stage: seconds}}`) and every attempt in each."""
    hours: dict[str, float] = {}
    for stages in seconds.values():
        for key, s in stages.items():
            kind = key.split("/")[0]
            hours[kind] = hours.get(kind, 0.0) + s / 3600
    return hours


def new_id() -> str:
    """A study directory's id: when it was made, to the second, plus 4 hex digits."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + hashlib.sha256(
        str(time.time_ns()).encode()).hexdigest()[:4]
