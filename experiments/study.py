"""The study driver: vocab, data, pre-training, held-out evaluation, GLUE, report; resumable.

    run_study(study, "runs/ablation-cpu", ["mlm_nsp", "random_init"], "results")

Stages, in order (the expensive ones come from a `Stages` bundle, experiments/stages.py):
  corpus    if `corpus.glue_text` names GLUE tasks: the pre-training text plus their
            unlabelled training text, once -> <study>/corpus/ (experiments/corpus.py)
  vocab     if `vocab.size` > 0: a WordPiece vocab of the pre-training text, once
            -> <study>/vocab/vocab.txt (every run's data and model use it)
  data      each distinct dataset once -> <study>/data/<name>   (experiments/datasets.py)
  baseline  the frequent-token MLM baseline on the reference held-out set
  budget    the step count: `budget.steps`, or `budget.minutes` turned into steps by
            timing the base variant once (remembered, so a rerun trains the same steps)
then for each pre-training seed, for each variant (run `<variant>/seed<k>`):
  pretrain  same steps for every variant, `config.seed` = k -> <study>/<run>/pretrain
            (resolved config.json, metrics.jsonl, checkpoints; random_init: step 0)
  eval      held-out MLM of the last checkpoint on the reference set -> <run>/eval.json
  glue      `bert-jax glue` on the checkpoint -> <study>/<run>/glue/summary.json
After each run its record goes to `<results>/runs/<run>.json` and the report
(experiments/report.py: table, plots) is rewritten in `<results>` from the records,
ready to commit (`<results>` is `results_dir`, by default <study>/results). Seed-major
order: a study stopped early has whole seeds.
<study>/state.json lists the finished stages (with their seconds and results) and is
replaced atomically after each one; a rerun skips them. A pre-training cut short
resumes from its last checkpoint (pretrain.run does that) and `bert-jax glue` skips
its finished runs, so a killed study loses at most the work since the last save.
<study>/study.json holds the study config; a rerun with other settings is refused, but
it may name more variants or more seeds. A new study directory (another machine) with
the same `results_dir` makes the shared stages again, checks them against the records
and runs only the runs the records lack (experiments/records.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from bert_jax import configlib, files
from bert_jax.errors import UserError
from bert_jax.runs import RunDir
from experiments import corpus, datasets, records, report, variants
from experiments.stages import Stages

log = logging.getLogger(__name__)


class State:
    """The study's record of finished stages: `{key: {"seconds", "finished", "result"}}`,
    plus the seconds spent in every attempt of a stage (finished or not).

    While a stage runs, its seconds are saved every `heartbeat_s`, so an attempt killed
    outright (SIGKILL at the end of a session: no `finally` runs) still counts, to within
    `heartbeat_s`."""

    def __init__(self, path: Path, heartbeat_s: float = 60.0) -> None:
        self.path = path
        self.heartbeat_s = heartbeat_s
        self.data = (json.loads(path.read_text()) if path.exists()
                     else {"finished": {}, "seconds": {}})
        # Tells this directory's seconds from another's in the records (records.py).
        self.data.setdefault("id", records.new_id())

    @property
    def id(self) -> str:
        return self.data["id"]

    def done(self, key: str) -> bool:
        return key in self.data["finished"]

    def result(self, key: str) -> Any:
        return self.data["finished"][key]["result"]

    def seconds(self, key: str) -> float:
        """Wall-clock spent in stage `key`, summed over attempts."""
        return float(self.data["seconds"].get(key, 0.0))

    def run(self, key: str, fn: Callable[[], Any]) -> Any:
        """`fn()` unless stage `key` is finished; records it (atomically) when it is."""
        if self.done(key):
            return self.result(key)
        log.info("stage %s", key)
        before, start = self.seconds(key), time.perf_counter()

        def record() -> None:
            self.data["seconds"][key] = round(before + time.perf_counter() - start, 3)
            self.save()

        stop = threading.Event()

        def heartbeat() -> None:  # only this thread touches self.data until stop is set
            while not stop.wait(self.heartbeat_s):
                record()

        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        try:
            result = fn()
        finally:
            stop.set()
            beat.join()
            record()
        self.data["finished"][key] = {"seconds": self.data["seconds"][key],
                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                      "result": result}
        self.save()
        return result

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        files.write_json_atomic(self.path, self.data)


def _study_json(study: ml_collections.ConfigDict) -> dict[str, Any]:
    """The study config as JSON, less the variants and seeds (a study may grow by them)."""
    current = json.loads(configlib.to_json(study))
    current.pop("variants", None)
    current.pop("seeds", None)
    return current


def _check_study_config(study: ml_collections.ConfigDict, study_dir: Path) -> None:
    """Refuses to continue a study made with other settings (variants and seeds may grow)."""
    path = study_dir / "study.json"
    current = _study_json(study)
    if path.exists():
        changed = records.config_changes(json.loads(path.read_text()), current)
        if changed:
            raise UserError(f"{study_dir} holds a study with other settings ({', '.join(changed)}"
                            "); use a new --study-dir, or set those fields back")
    else:
        study_dir.mkdir(parents=True, exist_ok=True)
        files.write_json_atomic(path, current)


def run_name(name: str, seed: int) -> str:
    """The directory (and stage suffix) of variant `name` pre-trained with `seed`."""
    return f"{name}/seed{seed}"


def with_vocab(study: ml_collections.ConfigDict, study_dir: Path) -> ml_collections.ConfigDict:
    """The study with its own vocab (vocab.size > 0) as the data and model vocab."""
    if int(study.vocab.size) <= 0:
        return study
    study = study.copy_and_resolve_references()
    study.pretrain.data.vocab = str(study_dir / "vocab" / "vocab.txt")
    return study


def variant_config(study: ml_collections.ConfigDict, name: str, steps: int,
                   study_dir: Path, seed: int = 0) -> ml_collections.ConfigDict:
    """Variant `name`'s full pre-training config for `seed`: overrides, budget, data."""
    cfg = variants.resolve(with_vocab(study, study_dir), name, steps)
    cfg.seed = int(seed)
    return datasets.attach(cfg, study, study_dir / "data")


def run_study(study: ml_collections.ConfigDict, study_dir: str | Path, names: Sequence[str],
              results_dir: str | Path | None = None, *, stages: Stages | None = None,
              glue: bool = True, progress: bool = True) -> list[dict[str, Any]]:
    """Runs (or resumes) the study; returns the table's rows (see the module doc)."""
    stages = stages or Stages()
    study_dir = Path(study_dir)
    results_dir = Path(results_dir) if results_dir is not None else study_dir / "results"
    seeds = [int(s) for s in study.seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--config.seeds={tuple(study.seeds)}: give distinct seeds")
    for name in names:
        variants.resolve(study, name, 1)  # unknown names fail before any work
    _check_study_config(study, study_dir)
    config = _study_json(study)  # as given (the corpus and vocab paths are changed below)
    state = State(study_dir / "state.json")
    if str(study.corpus.glue_text):
        state.run("corpus", lambda: stages.make_corpus(study, study_dir / "corpus"))
    study = corpus.with_corpus(study, study_dir)
    if int(study.vocab.size) > 0:
        state.run("vocab", lambda: stages.make_vocab(study, study_dir / "vocab"))
    study = with_vocab(study, study_dir)

    # Data: every dataset any variant needs, once, and the reference held-out set.
    # (Which ones depends on the step budget only through phase 2's start, so the
    # nominal steps serve.)
    nominal = int(study.budget.steps)
    base = variants.resolve(study, variants.BASELINE, nominal)
    needed = {spec.name: spec for name in names
              for spec in datasets.specs(variants.resolve(study, name, nominal), study).values()}
    base_specs = datasets.specs(base, study)
    needed |= {s.name: s for s in base_specs.values()}
    for key, spec in sorted(needed.items()):
        state.run(f"data/{key}",
                  lambda spec=spec: stages.make_data(spec, study, study_dir / "data" / spec.name))
    reference = study_dir / "data" / datasets.reference(study).name
    state.run("baseline", lambda: stages.baseline(
        study_dir / "data" / base_specs["train"].name, reference))

    # The records of finished runs (committed; maybe from a study directory now gone):
    # same settings and data, or refused; the runs they hold are not run again.
    recs = records.Records(results_dir / "runs")
    shown = report_variants(study, names)
    recs.restore_budget(config, state)
    steps = state.run("budget", lambda: _budget_steps(study, study_dir, stages))

    def sync(new_record: bool = False) -> None:
        """This directory's seconds into the records, and the report rewritten when they
        or the records changed (its time line and table stay the records')."""
        if recs.sync_study(config, state, study_dir) or new_record:
            report.write(report.collect(recs, shown), results_dir, recs)

    sync()
    taken = recs.restore(state, [run_name(n, k) for k in seeds for n in names], glue)
    if taken:
        log.info("from the records in %s: %s", recs.root, ", ".join(taken))

    try:
        for seed in seeds:
            for name in names:
                run = run_name(name, seed)
                cfg = variant_config(study, name, steps, study_dir, seed)
                workdir = study_dir / run / "pretrain"
                _check_workdir(cfg, workdir)

                def pretrain(cfg=cfg, workdir=workdir) -> dict[str, int]:
                    stages.pretrain(cfg, workdir, progress=progress)
                    return {"steps": int(cfg.train.total_steps)}

                finished_before = len(state.data["finished"])
                state.run(f"pretrain/{run}", pretrain)
                state.run(f"eval/{run}", lambda run=run: _evaluate(
                    study, study_dir, run, reference, stages))
                if glue:
                    state.run(f"glue/{run}", lambda run=run: sorted(records.glue_tasks(stages.glue(
                        study_dir / run / "pretrain", study_dir / run / "glue", study.glue))))
                ran = len(state.data["finished"]) > finished_before
                here = "restored" not in state.data["finished"][f"pretrain/{run}"]
                if here and (ran or not recs.path(run).exists()):  # its files are here
                    recs.save_run(records.make_run(study_dir, run, state))
                    sync(new_record=True)  # a record and a table to commit as each run lands
    finally:  # a stopped study (SIGTERM at a session's end) records its seconds so far
        sync()
    return report.collect(recs, shown)


def report_variants(study: ml_collections.ConfigDict, names: Sequence[str]) -> list[str]:
    """The variants a report shows: the study's own, then any other run now (`names`).
    With every recorded seed of each, the report is the same whatever a run was started
    with (a session may run some variants or seeds ahead of the others)."""
    own = variants.names(study.variants)
    return own + [n for n in names if n not in own]


def write_report(study: ml_collections.ConfigDict, names: Sequence[str],
                 results_dir: str | Path, out_dir: str | Path | None = None
                 ) -> list[dict[str, Any]]:
    """Writes the table and plots into `out_dir` (default `results_dir`) from the records
    in `results_dir/runs` of the variants `report_variants` names, every recorded seed;
    runs nothing and needs no study directory (a report on a fresh checkout, or a check
    that a committed report is the one its records make)."""
    recs = records.Records(Path(results_dir) / "runs")
    saved = recs.study()
    if saved is None:
        raise UserError(f"{recs.root} holds no study records ({records.STUDY_FILE}) to report on")
    changed = recs.config_changes(_study_json(study))
    if changed:
        raise UserError(f"the records in {recs.root} come from a study with other settings "
                        f"({', '.join(changed)}); set those fields back")
    rows = report.collect(recs, report_variants(study, names))
    report.write(rows, Path(out_dir or results_dir), recs)
    return rows


def _budget_steps(study: ml_collections.ConfigDict, study_dir: Path, stages: Stages) -> int:
    minutes = float(study.budget.minutes)
    if minutes <= 0:
        return int(study.budget.steps)
    base = variant_config(study, variants.BASELINE, int(study.budget.steps), study_dir)
    seconds_per_step = stages.calibrate(base, study_dir / "calibration")
    steps = max(1, int(minutes * 60 / seconds_per_step))
    log.info("%.3f s/step for %s: %d steps fill %.1f minutes", seconds_per_step,
             variants.BASELINE, steps, minutes)
    return steps


def _check_workdir(cfg: ml_collections.ConfigDict, workdir: Path) -> None:
    """A workdir from an earlier attempt must hold the same config (it will resume)."""
    if RunDir(workdir).config.exists():
        # Both sides through the save/load path round trip: a relative --study-dir is
        # not another config.
        changed = variants.diff(configlib.load_saved(workdir),
                                configlib.as_read_back(cfg, workdir))
        if changed:
            raise UserError(f"{workdir} was trained with another config ({', '.join(changed)})"
                            "; use a new --study-dir")


def _evaluate(study: ml_collections.ConfigDict, study_dir: Path, run: str, reference: Path,
              stages: Stages) -> dict[str, Any]:
    workdir = study_dir / run / "pretrain"
    metrics = stages.evaluate(workdir, reference, int(study.eval.batches))
    record = {"workdir": str(workdir), "eval_data": str(reference), **metrics}
    files.write_json_atomic(study_dir / run / "eval.json", record)
    return metrics
