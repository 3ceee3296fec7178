"""The ablation study (experiments/): variants are exact config diffs, the data's pair task
follows the objective, mlm_only has no NSP head and no NSP data, random_init is its
seed's initialisation, and the driver's bookkeeping resumes a killed study correctly."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from conftest import shared_file

from bert_jax import configlib, files
from experiments import corpus, datasets, records, report, stages, study, variants


def small_study(**overrides) -> ml_collections.ConfigDict:
    cfg = configlib.load("experiments/ablation.py:cpu")
    configlib.apply_overrides(cfg, [f"{k}={v!r}" for k, v in overrides.items()])
    return cfg


# ---- variants are config diffs ----------------------------------------------------------

@pytest.mark.parametrize("name", list(variants.VARIANTS))
def test_each_variant_differs_from_the_base_exactly_by_its_overrides(name):
    s = small_study()
    base = variants.resolve(s, variants.BASELINE, 300)
    assert variants.diff(base, variants.resolve(s, name, 300)) == sorted(variants.VARIANTS[name])


def test_base_is_the_original_objective_at_64():
    base = variants.resolve(small_study(), variants.BASELINE, 300)
    assert base.objective == "mlm_nsp" and base.nsp
    assert base.data.masking == "static" and base.data.masked_lm_prob == 0.15
    assert not base.data.whole_word_masking and base.train.phase2_start == 0
    assert base.optimizer.name == "bert_adam"
    assert base.train.total_steps == 300 and base.optimizer.warmup_steps == 15  # 5%


def test_mlm_only_full_config_differs_in_objective_and_its_data_only(tmp_path):
    s = small_study()
    a = study.variant_config(s, "mlm_nsp", 300, tmp_path)
    b = study.variant_config(s, "mlm_only", 300, tmp_path)
    assert variants.diff(a, b) == ["data.eval", "data.train", "objective"]
    assert Path(b.data.train).name == "train64-single-static-p15-sub-mp10"
    assert a.data.vocab == str(tmp_path / "vocab" / "vocab.txt")  # the study's own vocab


def test_seeds_set_the_run_seed_only(tmp_path):
    s = small_study()
    a = study.variant_config(s, "mlm_nsp", 300, tmp_path, seed=0)
    b = study.variant_config(s, "mlm_nsp", 300, tmp_path, seed=2)
    assert variants.diff(a, b) == ["seed"] and b.seed == 2


def test_data_is_shared_unless_a_data_setting_differs():
    s = small_study()
    names = {v: {k: x.name for k, x in datasets.specs(variants.resolve(s, v, 300), s).items()}
             for v in variants.VARIANTS}
    base = names["mlm_nsp"]
    assert names["adamw"] == base  # an optimizer change reuses the data
    assert names["random_init"] == base
    for v in ("mlm_only", "mlm_sop", "dynamic_masking", "whole_word", "mask_40"):
        assert names[v]["train"] != base["train"], v
    # The pair task comes from the objective (heads.OBJECTIVES), not from cfg.nsp.
    assert names["mlm_sop"]["train"] == "train64-sop-static-p15-sub-mp10"
    assert names["mlm_only"]["train"] == "train64-single-static-p15-sub-mp10"
    # Held-out data: static 15% sub-word masks with the variant's pair task; the final
    # score of every variant uses the base's (datasets.reference).
    assert {n["eval"] for v, n in names.items() if v not in ("mlm_only", "mlm_sop")} == {
        base["eval"]}
    assert datasets.reference(s).name == base["eval"] == "eval64-nsp-static-p15-sub-mp10"
    assert names["mask_40"]["train"].endswith("p40-sub-mp26")  # room for 40% of 64
    assert names["two_phase"]["train_phase2"].startswith("train128-nsp-static-p15")
    assert variants.resolve(s, "two_phase", 300).train.phase2_start == 270


@pytest.mark.slow
def test_mlm_only_has_no_nsp_head_and_its_data_no_pairs(tmp_path):
    vocab = shared_file("vocab", "bert-base-cased", "vocab.txt")
    text = shared_file("corpus", "wikitext-2-raw", "valid.txt").read_text().splitlines()
    corpus = tmp_path / "small.txt"
    corpus.write_text("\n".join(text[:120]) + "\n")  # the first three articles
    s = small_study(**{"corpus.train": str(corpus), "corpus.eval": str(corpus),
                       "pretrain.data.vocab": str(vocab), "vocab.size": 0})
    s.pretrain.model = configlib.model_section("tiny", vocab_size=28996,
                                               max_position_embeddings=128)
    s.pretrain.train.batch_size = 4
    cfg = study.variant_config(s, "mlm_only", 2, tmp_path / "study")
    for field in ("train", "eval"):
        spec = datasets.specs(cfg, s)[field]
        stages.make_data(spec, s, Path(cfg.data[field]))

    from bert_jax import checkpoint
    from bert_jax.data import PretrainingLoader
    from bert_jax.data.shards import read_metadata

    assert read_metadata(Path(cfg.data.train))["pair_objective"] == "none"
    batch = next(iter(PretrainingLoader(cfg.data.train, 32, seed=0)))
    assert not batch["token_type_ids"].any()  # one segment: no token type 1
    real = batch["attention_mask"].sum(axis=1)
    seps = (batch["input_ids"] == 102).sum(axis=1)  # [SEP]
    assert (seps == 1).all()
    assert (batch["input_ids"][np.arange(32), real - 1] == 102).all()  # ... at the very end
    assert np.median(real) == 64  # segments fill the length (but a document's last, short ones)

    workdir = tmp_path / "study" / "mlm_only" / "pretrain"
    stages.pretrain(cfg, workdir, progress=False)
    params, step = checkpoint.restore_params(workdir / "checkpoints")
    assert "cls_predictions" in params and "cls_seq_relationship" not in params
    metrics = stages.evaluate(workdir, Path(cfg.data.eval), 2)
    assert 0.0 <= metrics["masked_lm_accuracy"] <= 1.0
    # the same positions split into word starts and ## pieces (another implementation):
    # their weighted mean is the overall accuracy
    n_start = metrics["masked_lm_start_positions"]
    n_cont = metrics["masked_lm_continuation_positions"]
    assert n_start > 0 and n_cont > 0
    assert metrics["masked_lm_accuracy"] == pytest.approx(
        (metrics["masked_lm_start_accuracy"] * n_start
         + metrics["masked_lm_continuation_accuracy"] * n_cont) / (n_start + n_cont))
    assert metrics["checkpoint_step"] == step == 2  # the step of the weights it scored
    assert "next_sentence_accuracy" not in metrics


# ---- the driver: resume after a kill ----------------------------------------------------

class KilledError(Exception):
    pass


class FakeStages:
    """Stand-ins for the expensive stages: each call is recorded (by a key naming the
    stage and its target) and writes the files the real one would; call number `kill_at`
    raises before doing anything, as a kill would."""

    def __init__(self, kill_at: int | None = None, vocab: str = "[PAD]\nthe\n") -> None:
        self.calls: list[str] = []
        self.kill_at = kill_at
        self.vocab = vocab  # what make_vocab writes
        self.data_inputs: set[tuple[str, str, str]] = set()

    def _enter(self, key: str) -> None:
        self.calls.append(key)
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise KilledError(key)

    @staticmethod
    def run_of(workdir: Path) -> str:
        return f"{workdir.parent.parent.name}/{workdir.parent.name}"  # <variant>/seed<k>

    def make_corpus(self, study_cfg, out_dir: Path) -> dict:
        self._enter("corpus")
        out_dir.mkdir(parents=True)
        return {}

    def make_vocab(self, study_cfg, out_dir: Path) -> dict:
        self._enter("vocab")
        self.vocab_input = study_cfg.corpus.train
        out_dir.mkdir(parents=True)
        (out_dir / "vocab.txt").write_text(self.vocab)
        return {"tokens": 4096}

    def make_data(self, spec, study_cfg, out_dir: Path) -> dict:
        self._enter(f"data/{spec.name}")
        self.data_inputs.add((study_cfg.corpus.train, study_cfg.corpus.eval,
                              study_cfg.corpus.input_format))
        out_dir.mkdir(parents=True)
        return {"instances": 10}

    def baseline(self, train_dir: Path, eval_dir: Path) -> dict:
        self._enter("baseline")
        assert train_dir.is_dir() and eval_dir.is_dir()
        return {"accuracy": 0.04, "loss": 6.8, "token_id": 7, "train_positions": 100,
                "eval_positions": 50}

    def calibrate(self, cfg, workdir: Path) -> float:
        self._enter("calibrate")
        return 0.5  # seconds per step: 1 minute = 120 steps

    def pretrain(self, cfg, workdir: Path, progress: bool = True) -> None:
        self._enter(f"pretrain/{self.run_of(workdir)}")
        configlib.save(cfg, workdir)
        with open(workdir / "metrics.jsonl", "a") as f:
            for step in range(10, int(cfg.train.total_steps) + 1, 10):
                f.write(json.dumps({"step": step, "split": "train", "loss": 10.0 - step / 100,
                                    "masked_lm_loss": 9.0 - step / 100}) + "\n")
                f.write(json.dumps({"step": step, "split": "eval", "masked_lm_loss": 7.0,
                                    "masked_lm_accuracy": 0.1 + cfg.seed / 100}) + "\n")

    def evaluate(self, workdir: Path, eval_dir: Path, batches: int) -> dict:
        self._enter(f"eval/{self.run_of(workdir)}")
        assert eval_dir.name == "eval64-nsp-static-p15-sub-mp10"  # one reference set
        seed = configlib.load_saved(workdir).seed
        return {"masked_lm_accuracy": 0.25 + seed / 100, "masked_lm_loss": 5.0,
                "masked_lm_start_accuracy": 0.3,
                "masked_lm_continuation_accuracy": 0.2 + seed / 100}

    def glue(self, model_dir: Path, out_dir: Path, glue_cfg) -> dict:
        self._enter(f"glue/{self.run_of(model_dir)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        tasks = {t: {"main_metric": "accuracy", "best_lr": 1e-4, "mean": 60.0, "std": 2.0,
                     "best": 62.0, "n_seeds": 1, "runs": []} for t in glue_cfg.tasks.split(",")}
        summary = {"tasks": tasks, "glue_score": None}
        (out_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    def stages(self) -> stages.Stages:
        return stages.Stages(make_corpus=self.make_corpus, make_vocab=self.make_vocab,
                             baseline=self.baseline, make_data=self.make_data,
                             calibrate=self.calibrate,
                             pretrain=self.pretrain, evaluate=self.evaluate, glue=self.glue)


NAMES = ["mlm_nsp", "mlm_only"]


def run_with(fake: FakeStages, study_dir: Path, names=tuple(NAMES), results: Path | None = None,
             **overrides) -> list[dict]:
    s = small_study(**{"budget.minutes": 1.0, "seeds": (0, 1), "variants": ",".join(NAMES),
                       **overrides})
    return study.run_study(s, study_dir, list(names), results or study_dir / "results",
                           stages=fake.stages(), progress=False)


def test_an_uninterrupted_study_calls_each_stage_once(tmp_path):
    fake = FakeStages()
    rows = run_with(fake, tmp_path)
    runs = [f"{stage}/{v}/seed{k}" for k in (0, 1) for v in NAMES
            for stage in ("pretrain", "eval", "glue")]
    assert fake.calls == [
        "corpus", "vocab",
        "data/eval64-nsp-static-p15-sub-mp10", "data/eval64-single-static-p15-sub-mp10",
        "data/train64-nsp-static-p15-sub-mp10", "data/train64-single-static-p15-sub-mp10",
        "baseline", "calibrate", *runs]
    assert [sorted(r["runs"]) for r in rows] == [[0, 1], [0, 1]]
    assert {r["steps"] for row in rows for r in row["runs"].values()} == {120}  # 1 min, 0.5 s
    cfg = configlib.load_saved(tmp_path / "mlm_only" / "seed1" / "pretrain")
    assert cfg.train.total_steps == 120 and cfg.objective == "mlm" and cfg.seed == 1
    fake_again = FakeStages()
    run_with(fake_again, tmp_path)
    assert fake_again.calls == []  # all finished: nothing is redone
    more = FakeStages()  # a later session adds a seed and a variant: only their runs
    run_with(more, tmp_path, names=(*NAMES, "random_init"), seeds=(0, 1, 2))
    assert more.calls == [
        "pretrain/random_init/seed0", "eval/random_init/seed0", "glue/random_init/seed0",
        "pretrain/random_init/seed1", "eval/random_init/seed1", "glue/random_init/seed1",
        *[f"{stage}/{v}/seed2" for v in (*NAMES, "random_init")
          for stage in ("pretrain", "eval", "glue")]]
    assert configlib.load_saved(tmp_path / "random_init" / "seed2" / "pretrain"
                                ).train.total_steps == 0


def test_a_running_stage_saves_its_seconds_before_it_ends(tmp_path):
    # A study killed outright at a session's end runs no `finally`: the time of the
    # attempt must already be in state.json.
    state = study.State(tmp_path / "state.json", heartbeat_s=0.01)
    state.data["seconds"]["pretrain/x"] = 100.0  # an earlier attempt

    def stage() -> float:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (tmp_path / "state.json").exists():
                saved = json.loads((tmp_path / "state.json").read_text())
                if saved["seconds"].get("pretrain/x", 0) > 100.0:
                    return saved["seconds"]["pretrain/x"]
            time.sleep(0.01)
        raise AssertionError("no heartbeat in 10 s")

    seen = state.run("pretrain/x", stage)
    assert 100.0 < seen <= state.seconds("pretrain/x")
    assert json.loads((tmp_path / "state.json").read_text())["finished"]["pretrain/x"][
        "result"] == seen


def test_hours_by_kind_sums_every_attempt_per_kind_of_stage_over_study_dirs():
    seconds = {"dir-a": {"vocab": 36.0, "pretrain/a/seed0": 3600.0, "glue/a/seed0": 720.0},
               "dir-b": {"vocab": 36.0, "pretrain/b/seed1": 1800.0}}
    assert records.hours_by_kind(seconds) == pytest.approx(
        {"vocab": 0.02, "pretrain": 1.5, "glue": 0.2})


def test_a_relative_study_dir_resumes(tmp_path, monkeypatch):
    # Saved configs hold absolute data paths; the check against them must not see a
    # relative --study-dir as another config.
    monkeypatch.chdir(tmp_path)
    run_with(FakeStages(), Path("study"), seeds=(0,))
    again = FakeStages()
    run_with(again, Path("study"), seeds=(0, 1))
    assert again.calls == [f"{stage}/{v}/seed1" for v in NAMES
                           for stage in ("pretrain", "eval", "glue")]


def test_the_report_shows_every_recorded_seed_whatever_ran_and_report_only_runs_nothing(
        tmp_path):
    run_with(FakeStages(), tmp_path)  # the study's variants (NAMES), seeds 0, 1
    grow = FakeStages()  # a session runs one variant's third seed ahead, and another variant
    rows = run_with(grow, tmp_path, names=("mlm_nsp", "random_init"), seeds=(2,))
    assert grow.calls == [f"{stage}/{v}/seed2" for v in ("mlm_nsp", "random_init")
                          for stage in ("pretrain", "eval", "glue")]
    # the study's variants first, then the other one; every recorded seed of each
    assert [(r["variant"], sorted(r["runs"])) for r in rows] == [
        ("mlm_nsp", [0, 1, 2]), ("mlm_only", [0, 1]), ("random_init", [2])]
    md = (tmp_path / "results" / "ablation.md").read_text()
    assert "| mlm_nsp | `(base)` | 120 | 3 |" in md
    assert "| mlm_only | `objective=mlm` | 120 | 2 |" in md
    assert "| random_init | `train.total_steps=0` | 0 | 1 |" in md

    s = small_study(**{"budget.minutes": 1.0, "variants": ",".join(NAMES)})
    state_before = (tmp_path / "state.json").read_text()
    (tmp_path / "results" / "ablation.md").unlink()
    study.write_report(s, ["random_init"], tmp_path / "results")
    assert (tmp_path / "results" / "ablation.md").read_text() == md  # the same table
    assert (tmp_path / "state.json").read_text() == state_before  # nothing ran
    only_own = study.write_report(s, NAMES, tmp_path / "results", tmp_path / "elsewhere")
    assert [r["variant"] for r in only_own] == NAMES
    assert (tmp_path / "elsewhere" / "ablation.md").exists()
    from bert_jax.errors import UserError
    with pytest.raises(UserError, match="no study records"):
        study.write_report(s, NAMES, tmp_path / "empty")
    with pytest.raises(UserError, match="other settings .corpus.seed"):
        study.write_report(small_study(**{"budget.minutes": 1.0, "corpus.seed": 7}), NAMES,
                           tmp_path / "results")


def test_a_new_study_dir_takes_the_recorded_runs_and_runs_only_the_rest(tmp_path):
    # The study directory is scratch (a new machine has none); the records are committed.
    results = tmp_path / "results"
    run_with(FakeStages(), tmp_path / "first", results=results, seeds=(0,))
    first_md = (results / "ablation.md").read_text()
    record = json.loads((results / "runs" / "mlm_only" / "seed0.json").read_text())
    assert record["steps"] == 120 and record["config"]["objective"] == "mlm"
    assert record["heldout"] == {"masked_lm_accuracy": 0.25, "masked_lm_loss": 5.0,
                                 "masked_lm_start_accuracy": 0.3,
                                 "masked_lm_continuation_accuracy": 0.2}
    assert record["train"][-1] == {"step": 120, "masked_lm_loss": 9.0 - 1.2}
    assert [e["step"] for e in record["evals"]] == list(range(10, 121, 10))
    assert sorted(record["glue"]["tasks"]) == ["RTE", "SST-2", "STS-B"]
    assert set(record["seconds"]) == {"pretrain", "eval", "glue"}
    import shutil
    shutil.rmtree(tmp_path / "first")

    # The report alone, from the records: the same table the study wrote.
    (results / "ablation.md").unlink()
    study.write_report(small_study(**{"budget.minutes": 1.0, "variants": ",".join(NAMES)}),
                       NAMES, results)
    assert (results / "ablation.md").read_text() == first_md

    fake = FakeStages()  # a new directory, one more seed: shared stages, then seed 1 only
    rows = run_with(fake, tmp_path / "second", results=results, seeds=(0, 1))
    assert fake.calls == [
        "corpus", "vocab",
        "data/eval64-nsp-static-p15-sub-mp10", "data/eval64-single-static-p15-sub-mp10",
        "data/train64-nsp-static-p15-sub-mp10", "data/train64-single-static-p15-sub-mp10",
        "baseline",  # no calibrate: the recorded budget (timed elsewhere) is kept
        *[f"{stage}/{v}/seed1" for v in NAMES for stage in ("pretrain", "eval", "glue")]]
    assert [sorted(r["runs"]) for r in rows] == [[0, 1], [0, 1]]
    assert rows[1]["runs"][0]["eval_mlm_accuracy"] == 0.25  # from the record
    assert rows[1]["runs"][1]["eval_mlm_accuracy"] == 0.26  # run here
    seconds = json.loads((results / "runs" / "study.json").read_text())["seconds"]
    assert len(seconds) == 2  # each directory's attempts count once
    assert "pretrain/mlm_nsp/seed0" in next(iter(seconds.values()))
    assert not any(k.endswith("seed0") for k in list(seconds.values())[1])
    again = FakeStages()
    run_with(again, tmp_path / "second", results=results, seeds=(0, 1))
    assert again.calls == []


def test_a_stopped_study_records_the_seconds_of_the_run_it_stopped_in(tmp_path):
    # SIGTERM at a session's end: the run in progress is lost with its directory, not
    # the time it took.
    fake = FakeStages(kill_at=12)  # corpus, vocab, 4 data, baseline, calibrate, 1 run's 3
    with pytest.raises(KilledError):  # stages; the 12th: pretrain/mlm_only/seed0
        run_with(fake, tmp_path, seeds=(0,))
    assert fake.calls[-1] == "pretrain/mlm_only/seed0"
    seconds = json.loads((tmp_path / "results" / "runs" / "study.json").read_text())["seconds"]
    assert "pretrain/mlm_only/seed0" in next(iter(seconds.values()))
    # ... and rewrote the table with them: it is the one the records make
    s = small_study(**{"budget.minutes": 1.0, "variants": ",".join(NAMES)})
    study.write_report(s, NAMES, tmp_path / "results", tmp_path / "again")
    assert ((tmp_path / "again" / "ablation.md").read_text()
            == (tmp_path / "results" / "ablation.md").read_text())


def test_records_from_other_data_are_refused(tmp_path):
    from bert_jax.errors import UserError
    results = tmp_path / "results"
    run_with(FakeStages(), tmp_path / "first", results=results, seeds=(0,))
    with pytest.raises(UserError, match=r"other settings or data \(vocab \(sha256\)\)"):
        run_with(FakeStages(vocab="[PAD]\nthe\nof\n"), tmp_path / "second", results=results,
                 seeds=(0,))
    with pytest.raises(UserError, match=r"other settings or data \(corpus.seed\)"):
        run_with(FakeStages(), tmp_path / "third", results=results, seeds=(0,),
                 **{"corpus.seed": 7})
    assert not (tmp_path / "second" / "mlm_nsp").exists()  # refused before any run


def test_glue_text_makes_the_corpus_once_and_every_later_stage_reads_it(tmp_path):
    fake = FakeStages()  # the cpu preset's glue_text
    run_with(fake, tmp_path, names=("mlm_nsp",), seeds=(0,))
    assert fake.calls[:2] == ["corpus", "vocab"]
    corpus_dir = tmp_path / "corpus"
    assert fake.vocab_input == str(corpus_dir / "train.txt")
    assert fake.data_inputs == {(str(corpus_dir / "train.txt"), str(corpus_dir / "eval.txt"),
                                 "sentences")}
    again = FakeStages()
    run_with(again, tmp_path, names=("mlm_nsp",), seeds=(0,))
    assert again.calls == []
    plain = FakeStages()  # without glue_text: no corpus stage, the configured files as given
    run_with(plain, tmp_path / "plain", names=("mlm_nsp",), seeds=(0,),
             **{"corpus.glue_text": ""})
    assert "corpus" not in plain.calls
    wiki = small_study().corpus
    assert plain.data_inputs == {(wiki.train, wiki.eval, "wikitext")}


def _tsv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


def test_corpus_appends_the_glue_training_text_without_labels(tmp_path):
    glue_dir = tmp_path / "glue"
    sst = [f"phrase number {i} is fine" for i in range(10)]
    _tsv(glue_dir / "SST-2" / "train.tsv", [["sentence", "label"]]
         + [[t, str(i % 2)] for i, t in enumerate(sst)])
    _tsv(glue_dir / "SST-2" / "dev.tsv", [["sentence", "label"], ["dev text never read", "1"]])
    _tsv(glue_dir / "MRPC" / "train.tsv",
         [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
          ["1", "11", "12", "First one. It has two sentences.", "A paraphrase of it."],
          ["0", "21", "22", "Second pair here.", "Something else."]])
    wiki = tmp_path / "wiki.txt"
    wiki.write_text(" = Alpha = \n\n Alpha is first. It is A.\n\n = = Part = = \n Still "
                    "alpha.\n = Beta = \n Beta is second.\n")
    held_out = tmp_path / "valid.txt"
    held_out.write_text(" = Gamma = \n Gamma is held out. Yes.\n")
    s = small_study()
    s.corpus.train, s.corpus.eval, s.corpus.input_format = str(wiki), str(held_out), "wikitext"
    s.glue.data_dir, s.corpus.glue_text = str(glue_dir), "SST-2,MRPC"
    counts = corpus.make_corpus(s, tmp_path / "corpus")

    def docs(path: Path) -> list[list[str]]:
        return [d.split("\n") for d in path.read_text().strip("\n").split("\n\n")]

    assert docs(tmp_path / "corpus" / "train.txt") == [
        ["Alpha is first.", "It is A.", "Still alpha."], ["Beta is second."],
        sst[:8], sst[8:],  # single sentences: 8 examples a document
        ["First one.", "It has two sentences.", "A paraphrase of it."],  # a pair: one each
        ["Second pair here.", "Something else."]]
    assert docs(tmp_path / "corpus" / "eval.txt") == [["Gamma is held out.", "Yes."]]
    assert counts["train"]["documents"] == 6 and counts["eval"]["sentences"] == 2
    adjusted = corpus.with_corpus(s, tmp_path)
    assert adjusted.corpus.train == str(tmp_path / "corpus" / "train.txt")
    assert adjusted.corpus.input_format == "sentences" and s.corpus.input_format == "wikitext"


@pytest.mark.slow
def test_a_killed_study_resumes_without_redoing_finished_stages(tmp_path):
    full = FakeStages()
    run_with(full, tmp_path / "reference")
    for k in range(1, len(full.calls) + 1):
        study_dir = tmp_path / f"killed_at_{k}"
        first = FakeStages(kill_at=k)
        with pytest.raises(KilledError):
            run_with(first, study_dir)
        state = json.loads((study_dir / "state.json").read_text())
        assert len(state["finished"]) == k - 1  # the stages before the kill
        assert not list(study_dir.glob(files.TMP_PREFIX + "*"))  # state.json replaced atomically
        second = FakeStages()
        rows = run_with(second, study_dir)
        # The killed stage runs again; the ones finished before it do not.
        assert first.calls[:-1] + second.calls == full.calls, k
        with open(study_dir / "results" / "ablation.csv") as f:
            table = list(csv.DictReader(f))
        assert [(r["variant"], r["seed"]) for r in table] == [
            ("mlm_nsp", "0"), ("mlm_nsp", "1"), ("mlm_only", "0"), ("mlm_only", "1")]
        for r in table:
            assert r["eval_mlm_accuracy"] == str(0.25 + int(r["seed"]) / 100)
            assert r["steps"] == "120"
            assert all(r[t] == "60.0" for t in ("SST-2", "RTE", "STS-B"))
        assert len(rows) == 2


def test_report_files_and_changed_settings_are_refused(tmp_path):
    run_with(FakeStages(), tmp_path)
    results = tmp_path / "results"
    md = (results / "ablation.md").read_text()
    # two seeds: accuracy 25% and 26%, mean 25.5, t(1) interval 25.5 ± 12.706 * 0.5
    assert ("| mlm_only | `objective=mlm` | 120 | 2 | 5.000 [5.000, 5.000] | 25.5 [19.1, 31.9] |"
            in md)
    assert "always the commonest training token 4.0% accuracy" in md
    assert "| mlm_only | **not separable** (Δ +0.000" in md  # same numbers as mlm_nsp
    # by piece: word starts 30% for both seeds; ## pieces 20% and 21%
    assert "| mlm_only | 30.0 [30.0, 30.0] | 20.5 [14.1, 26.9] |" in md
    assert (results / "curves.png").stat().st_size > 0
    assert (results / "glue.png").stat().st_size > 0
    from bert_jax.errors import UserError
    with pytest.raises(UserError, match="budget.minutes"):
        run_with(FakeStages(), tmp_path, **{"budget.minutes": 2.0})


def test_glue_command_line():
    s = small_study()
    cmd = stages.glue_command(Path("st/v/seed0/pretrain"), Path("st/v/seed0/glue"), s.glue)
    assert cmd[0] == sys.executable
    assert cmd[1:] == ["-m", "bert_jax.cli", "glue", "--task", "SST-2,RTE,STS-B",
                       "--model", "st/v/seed0/pretrain", "--data-dir", s.glue.data_dir,
                       "--workdir", "st/v/seed0/glue", "--lrs", "0.0001,0.0003",
                       "--seeds", "1,2,3", "--config.train_limit=6000",
                       "--config.batch_size=32", "--config.epochs=3", "--config.packing=True",
                       "--config.max_seq_length=64", "--json", "--no-progress"]


def test_records_name_the_shared_data_wherever_the_checkout_is(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "SHARED_DATA", Path("/a/shared/data"))
    made_here = {"corpus": {"train": "/a/shared/data/corpus/t.txt", "seed": 1},
                 "glue": {"data_dir": "/a/shared/data/glue", "lrs": [1e-4]}, "x": "/b/y"}
    assert records.portable(made_here) == {
        "corpus": {"train": "<shared>/corpus/t.txt", "seed": 1},
        "glue": {"data_dir": "<shared>/glue", "lrs": [1e-4]}, "x": "/b/y"}
    (tmp_path / "study.json").write_text(json.dumps({"config": records.portable(made_here)}))
    monkeypatch.setattr(records, "SHARED_DATA", Path("/c/shared/data"))  # another machine
    there = json.loads(json.dumps(made_here).replace("/a/shared/", "/c/shared/"))
    assert records.Records(tmp_path).config_changes(there) == []
    there["corpus"]["train"] = "/c/shared/data/corpus/other.txt"
    assert records.Records(tmp_path).config_changes(there) == ["corpus.train"]


def test_the_committed_ablation_report_is_the_one_its_committed_records_make(tmp_path):
    # experiments/results/ holds the CPU study's records (runs/) and its report; the
    # report must be what the records and this code make (rewrite it with --report-only).
    from conftest import REPO

    results = REPO / "experiments" / "results"
    s = configlib.load(str(REPO / "experiments" / "ablation.py") + ":cpu")
    rows = study.write_report(s, [], results, tmp_path)
    assert sum(len(r["runs"]) for r in rows) >= 1
    for name in ("ablation.md", "ablation.csv"):
        assert (tmp_path / name).read_text() == (results / name).read_text(), name


def test_the_readme_holds_the_committed_ablation_report():
    # the README's Objective ablations section carries experiments/results/ablation.md
    # verbatim (rewrite it with --report-only --readme README.md)
    from conftest import REPO

    copy = report.embedded((REPO / "README.md").read_text())
    assert copy, "README.md has no ablation report block"
    assert copy == (REPO / "experiments" / "results" / "ablation.md").read_text()


def test_readme_embedding_replaces_only_the_report_block():
    readme = f"intro\n{report.README_BEGIN}\nold table\n{report.README_END}\nafter\n"
    new = report.embed(readme, "| a |\n|---|\n")
    assert new == f"intro\n{report.README_BEGIN}\n| a |\n|---|\n{report.README_END}\nafter\n"
    assert report.embedded(new) == "| a |\n|---|\n"
    assert report.embed(new, "| a |\n|---|\n") == new
    with pytest.raises(ValueError, match="no `<!-- ablation report"):
        report.embed("no block here\n", "x")
    assert report.embedded("no block here\n") == ""
