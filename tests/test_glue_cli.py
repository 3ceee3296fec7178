"""`bert-jax glue` and `bert-jax predict` end to end, on the GLUE fixtures and a tiny model.

One small sweep (MNLI: 2 learning rates x 2 seeds, 2 steps each, with --predict-test and
--export) is shared by the tests: its summary, reports and test-server files; resuming
(only the run without results.json is redone); the export against transformers'
BertForSequenceClassification; `predict` on the export and on a run directory. Then the
one-line errors for bad input, each on a damaged copy of the fixtures.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import require

from bert_jax import cli, weights
from bert_jax import model as model_lib
from bert_jax.config import preset
from bert_jax.errors import UserError
from bert_jax.glue import classifier, features, packed, tasks
from bert_jax.glue import sweep as glue_sweep
from bert_jax.tokenizer import Tokenizer
from bert_jax.train.writer import read_metrics

FIXTURES = Path(__file__).parent / "fixtures" / "glue"
# A few steps of a tiny model: one length bucket, so one compilation per program.
TINY = ["--config.batch_size=2", "--config.eval_batch_size=4", "--config.max_seq_length=32",
        "--config.length_buckets=()", "--config.epochs=1.0", "--config.train_limit=4"]
LRS, SEEDS = (1e-3, 3e-3), (1, 2)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny BERT encoder (no classifier) with a vocab of the fixtures' words."""
    d = tmp_path_factory.mktemp("tiny-bert")
    cfg = preset("tiny", num_hidden_layers=1)  # one layer: less to compile
    words = sorted({w.lower().strip('.?,"') for task in ("MNLI", "QQP")
                    for split in ("train", "dev", "dev_matched")
                    if tasks.has_split(task, FIXTURES, split)
                    for e in tasks.read_split(task, FIXTURES, split)
                    for w in f"{e.text_a} {e.text_b}".split()} - {""})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", *words]
    vocab = vocab[:cfg.vocab_size]
    vocab += [f"w{i}" for i in range(cfg.vocab_size - len(vocab))]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    params = model_lib.init_params(model_lib.build(cfg, "encoder"), jax.random.key(0))
    weights.save_pretrained(d, cfg, params, Tokenizer.from_vocab(d / "vocab.txt"), "encoder")
    return d


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def glue_args(model: Path, data_dir: Path, workdir: Path, *extra: str) -> list[str]:
    return ["glue", "--task", "MNLI", "--model", model, "--data-dir", data_dir,
            "--workdir", workdir, "--lrs", ",".join(map(str, LRS)),
            "--seeds", ",".join(map(str, SEEDS)), "--no-progress", *TINY, *extra]


@pytest.fixture(scope="module")
def sweep(tiny_model, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("glue_sweep")
    args = glue_args(tiny_model, FIXTURES, root / "w", "--predict-test", "--export",
                     root / "export", "--json")
    code, out, err = run_cli(*args)
    assert code == 0, err
    return {"args": args, "workdir": root / "w", "export": root / "export",
            "summary": json.loads(out)}


# ---- the sweep --------------------------------------------------------------------------

@pytest.mark.slow
def test_sweep_summary_picks_lr_by_mean_over_seeds(sweep):
    summary, workdir = sweep["summary"], sweep["workdir"]
    assert json.loads((workdir / "summary.json").read_text()) == summary
    s = summary["tasks"]["MNLI"]
    assert s["main_metric"] == "mean(matched_accuracy,mismatched_accuracy)"
    assert len(s["runs"]) == len(LRS) * len(SEEDS) and s["n_seeds"] == len(SEEDS)
    means = {}
    for lr in LRS:
        values = [r["main_metric"] for r in s["runs"] if r["lr"] == lr]
        means[lr] = np.mean(values)
    assert s["best_lr"] == max(LRS, key=lambda lr: means[lr])
    chosen = [r["main_metric"] for r in s["runs"] if r["lr"] == s["best_lr"]]
    assert s["mean"] == pytest.approx(np.mean(chosen))
    assert s["std"] == pytest.approx(np.std(chosen, ddof=1))
    assert s["best"] == max(chosen)
    assert summary["glue_score"] is None  # one task of nine
    for r in s["runs"]:
        d = workdir / r["dir"]
        assert r["train_examples"] == 4 and r["steps"] == 2  # --config.train_limit=4
        assert r["main_metric"] == pytest.approx(np.mean(list(r["metrics"].values())))
        saved = json.loads((d / "config.json").read_text())
        assert (saved["task"], saved["lr"], saved["seed"]) == ("MNLI", r["lr"], r["seed"])
        assert saved["model"]["num_labels"] == 3
        records = {m["split"]: m for m in read_metrics(d)}  # train loss, then dev metrics
        assert sorted(records) == ["eval", "train"]
        assert records["eval"]["main_metric"] == pytest.approx(r["main_metric"])


@pytest.mark.slow
def test_sweep_reports(sweep):
    workdir = sweep["workdir"]
    md = (workdir / "results.md").read_text()
    assert "| task | metric | best lr |" in md and "| MNLI |" in md
    rows = list(csv.DictReader(io.StringIO((workdir / "results.csv").read_text())))
    assert len(rows) == 4 and {r["task"] for r in rows} == {"MNLI"}
    assert sum(int(r["chosen_lr"]) for r in rows) == len(SEEDS)
    assert (workdir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_submission_files_from_the_best_run(sweep):
    workdir = sweep["workdir"]
    best = json.loads((workdir / sweep["summary"]["tasks"]["MNLI"]["best_run"] /
                       "test_predictions.json").read_text())
    files = {"MNLI-m.tsv": ("MNLI", "test_matched"), "MNLI-mm.tsv": ("MNLI", "test_mismatched"),
             "AX.tsv": ("AX", "test")}
    for name, (task, split) in files.items():
        lines = (workdir / "submission" / name).read_text().splitlines()
        assert lines[0] == "index\tprediction"
        index = [line.split("\t")[0] for line in lines[1:]]
        assert index == [e.guid for e in tasks.read_split(task, FIXTURES, split)]
        entry = next(e for e in best if (e["task"], e["split"]) == (task, split))
        assert [line.split("\t")[1] for line in lines[1:]] == [
            tasks.NLI[p] for p in entry["prediction"]]
    with zipfile.ZipFile(workdir / "submission.zip") as zf:
        assert sorted(zf.namelist()) == sorted(files)


@pytest.mark.slow
def test_rerun_redoes_only_the_unfinished_run(sweep, caplog):
    workdir = sweep["workdir"]
    runs = [workdir / r["dir"] for r in sweep["summary"]["tasks"]["MNLI"]["runs"]]
    redo = runs[1]
    (redo / "results.json").unlink()  # as if the sweep had been killed during this run
    before = {d: (d / "results.json").stat().st_mtime_ns for d in runs if d != redo}
    caplog.set_level("INFO", logger="bert_jax.glue.sweep")
    code, out, err = run_cli(*sweep["args"])
    assert code == 0, err
    assert {d: (d / "results.json").stat().st_mtime_ns for d in before} == before
    assert (redo / "results.json").exists()
    assert caplog.text.count("done already") == len(runs) - 1
    again = json.loads(out)["tasks"]["MNLI"]
    assert [r["dir"] for r in again["runs"]] == [str(d.relative_to(workdir)) for d in runs]

    # Another recipe in the same workdir is refused, naming the field.
    code, _, err = run_cli(*sweep["args"], "--config.epochs=2.0")
    assert code == 2 and "was run with epochs=1.0" in err and "Traceback" not in err
    # The model section is part of the recipe too (the run saved its whole model config).
    code, _, err = run_cli(*sweep["args"], "--config.model.hidden_dropout_prob=0.2")
    assert code == 2 and "was run with model.hidden_dropout_prob=0.1" in err


# ---- the fine-tuned model: export and predict -------------------------------------------

def _hf_inputs(tokenizer: Tokenizer, pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    examples = [tasks.Example(str(i), a, b, None) for i, (a, b) in enumerate(pairs)]
    return features.featurize(examples, tokenizer, max_length=32)


PAIRS = [("The lighthouse keeper painted the door blue.", "The door is blue now."),
         ("Nobody in the village owned a bicycle.", "Three villagers rode bicycles.")]


@pytest.mark.slow
def test_export_loads_in_transformers_with_the_same_logits(sweep):
    torch = require("torch")
    transformers = require("transformers")
    export = sweep["export"] / "MNLI"
    hf, info = transformers.BertForSequenceClassification.from_pretrained(
        export, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert hf.config.id2label == dict(enumerate(tasks.NLI))
    task, ours = classifier.load_classifier(export)
    assert task.name == "MNLI"
    inputs = _hf_inputs(ours.tokenizer, PAIRS)
    logits = classifier.classify(ours, inputs, batch_size=4, buckets=())
    with torch.no_grad():
        theirs = hf.eval()(**{k: torch.from_numpy(inputs[k].astype(np.int64))
                              for k in features.FEATURE_KEYS}).logits.numpy()
    np.testing.assert_allclose(logits, theirs, atol=1e-5)
    # The run directory it came from is the same model.
    _, run = classifier.load_classifier(
        sweep["workdir"] / sweep["summary"]["tasks"]["MNLI"]["best_run"])
    np.testing.assert_allclose(classifier.classify(run, inputs, batch_size=4, buckets=()),
                               logits, atol=1e-6)


@pytest.mark.slow
def test_predict_json_and_table(sweep, tmp_path):
    torch = require("torch")
    transformers = require("transformers")
    export = sweep["export"] / "MNLI"
    code, out, err = run_cli("predict", "--model", export, "--json", *PAIRS[0])
    assert code == 0, err
    got = json.loads(out)
    hf = transformers.BertForSequenceClassification.from_pretrained(export).eval()
    _, ours = classifier.load_classifier(export)
    inputs = _hf_inputs(ours.tokenizer, PAIRS[:1])
    with torch.no_grad():
        probs = hf(**{k: torch.from_numpy(inputs[k].astype(np.int64))
                      for k in features.FEATURE_KEYS}).logits.softmax(-1).numpy()[0]
    assert list(got["probabilities"]) == list(tasks.NLI)
    np.testing.assert_allclose(list(got["probabilities"].values()), probs, atol=1e-5)
    assert got["label"] == tasks.NLI[int(probs.argmax())]

    # A run directory as the model, pairs from a TSV file, the table.
    (tmp_path / "pairs.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS))
    best = sweep["workdir"] / sweep["summary"]["tasks"]["MNLI"]["best_run"]
    code, out, err = run_cli("predict", "--model", best, "--input", tmp_path / "pairs.tsv")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["label", "p(contradiction)"] and len(lines) == 3
    assert lines[1].split()[0] == got["label"]


# ---- packing (--config.packing, predict --packing) ---------------------------------------

@pytest.mark.slow
def test_packed_finetuning_equals_padded_at_dropout_0(tiny_model, tmp_path):
    """`--config.packing=True` at dropout 0: the same steps, training loss and dev
    metrics as the padded run of the same seed (fp32 rounding)."""
    model = tmp_path / "model"  # the tiny model without attention dropout
    shutil.copytree(tiny_model, model)
    hf = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**hf, "attention_probs_dropout_prob": 0.0}))
    results = {}
    for packing in (False, True):
        workdir = tmp_path / f"packing_{packing}"
        # Rows of 64 tokens: a batch's two examples (16-22 tokens each) share one row.
        args = glue_args(model, FIXTURES, workdir, "--config.model.hidden_dropout_prob=0.0",
                         "--config.max_seq_length=64", f"--config.packing={packing}",
                         "--config.log_every=1", "--json")
        args[args.index("--lrs") + 1], args[args.index("--seeds") + 1] = "3e-3", "1"
        code, out, err = run_cli(*args)
        assert code == 0, err
        run = json.loads(out)["tasks"]["MNLI"]["runs"][0]
        losses = [m["loss"] for m in read_metrics(workdir / run["dir"]) if m["split"] == "train"]
        results[packing] = run, losses
    (plain, plain_losses), (packs, packs_losses) = results[False], results[True]
    assert packs["steps"] == plain["steps"] == 2 and len(packs_losses) == 2
    np.testing.assert_allclose(packs_losses, plain_losses, rtol=1e-5)
    assert packs["metrics"] == pytest.approx(plain["metrics"], abs=1e-9)


@pytest.mark.parametrize("task", ["MNLI", "QQP"])
def test_packed_evaluation_predicts_as_padded(tiny_model, task):
    """The fixture tasks' dev and test splits, featurized as a run does: packed prediction
    (evaluation under --config.packing, `predict --packing`) gives the padded logits."""
    spec = tasks.get_task(task)
    cfg = preset("tiny", num_hidden_layers=1, num_labels=spec.num_labels, initializer_range=0.2)
    params = model_lib.init_params(model_lib.build(cfg, "classification"), jax.random.key(1))
    tokenizer = Tokenizer.from_vocab(tiny_model / "vocab.txt")
    model = weights.Pretrained(cfg, params, tokenizer, None, "classification")
    data = features.load_task_data(task, FIXTURES, tokenizer, max_length=64, predict_test=True)
    for split in (*spec.dev_splits, *spec.test_splits):
        # Rows of 64 tokens hold two or three of these 15-22-token examples.
        assert len(packed.pack_features(data[split], 16).input_ids) < len(data[split]["guid"])
        want = classifier.classify(model, data[split], batch_size=4, buckets=())
        got = classifier.classify(model, data[split], batch_size=4, packing=True)
        assert want.std(0).min() > 1e-3  # the examples' logits really differ
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
        assert (classifier.to_predictions(spec, got)
                == classifier.to_predictions(spec, want)).all()


@pytest.mark.slow
def test_predict_packing_prints_the_same(sweep, tmp_path):
    (tmp_path / "pairs.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS * 3))
    args = ("predict", "--model", sweep["export"] / "MNLI", "--input", tmp_path / "pairs.tsv",
            "--json")
    outputs = []
    for extra in ((), ("--packing",)):
        code, out, err = run_cli(*args, *extra)
        assert code == 0, err
        outputs.append([json.loads(line) for line in out.splitlines()])
    plain, packs = outputs
    assert len(packs) == 6 and [p["label"] for p in packs] == [p["label"] for p in plain]
    for p, q in zip(packs, plain):
        np.testing.assert_allclose(list(p["probabilities"].values()),
                                   list(q["probabilities"].values()), atol=1e-6)


# ---- bad input: one line, exit status 2 -------------------------------------------------

def _damage(root: Path, how: str) -> Path:
    """A copy of the fixtures, broken in one way."""
    data = root / "glue"
    shutil.copytree(FIXTURES, data)
    train = data / "QQP" / "train.tsv"
    lines = train.read_text().splitlines()
    if how == "columns":
        lines[2] = "\t".join(lines[2].split("\t")[:-1])  # line 3 loses its label column
        train.write_text("\n".join(lines) + "\n")
    elif how == "label":
        lines[3] = lines[3].rsplit("\t", 1)[0] + "\tmaybe"
        train.write_text("\n".join(lines) + "\n")
    elif how == "empty":
        (data / "QQP" / "dev.tsv").write_text("")
    elif how == "no-split":
        (data / "QQP" / "dev.tsv").unlink()
    return data


@pytest.mark.parametrize("how, task, message", [
    ("columns", "QQP", "QQP/train.tsv:3: expected 6 tab-separated columns"),
    ("label", "QQP", "QQP/train.tsv:4: unknown QQP label 'maybe'"),
    ("empty", "QQP", "QQP/dev.tsv is empty"),
    ("no-split", "QQP", "QQP dev file not found"),
    ("none", "RTE", "RTE train file not found: expected"),  # no RTE directory at all
])
def test_bad_data_is_one_line_error(tiny_model, tmp_path, how, task, message):
    data = _damage(tmp_path, how)
    args = glue_args(tiny_model, data, tmp_path / "w")
    args[args.index("MNLI")] = task
    code, out, err = run_cli(*args)
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert message in err


@pytest.mark.parametrize("flag, value, message", [
    ("--task", "XNLI", "unknown GLUE task 'XNLI'"),
    ("--task", "AX", "AX has no training data"),
    ("--lrs", "2e-5,abc", "bad --lrs '2e-5,abc': 'abc' is not a number"),
    ("--lrs", "0", "a learning rate must be positive"),
    ("--seeds", "1,two", "bad --seeds '1,two'"),
    ("--data-dir", "/no/such/dir", "--data-dir /no/such/dir is not a directory"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, flag, value, message):
    args = glue_args(tmp_path / "no-model-needed", FIXTURES, tmp_path / "w")
    args[args.index(flag) + 1] = value
    code, out, err = run_cli(*args)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip().splitlines()[0]]  # exactly one line
    assert err.startswith("error: ") and message in err


def test_sweep_does_not_write_into_the_config_it_was_given(tmp_path):
    from bert_jax import configlib

    config = configlib.load("configs/glue.py:default")
    given = config.to_json()
    with pytest.raises(UserError, match="RTE train file not found"):  # before any model loads
        glue_sweep.sweep(config, ["RTE"], "some-model", tmp_path, tmp_path / "w",
                         export=tmp_path / "export")
    assert config.to_json() == given


def test_finetuning_lays_out_its_run_on_the_configs_mesh(tiny_model, tmp_path):
    """Fine-tuning builds the mesh of its config's mesh section (as pre-training does),
    no longer a pinned (-1, 1, 1): one that the devices cannot fill is refused."""
    n = jax.device_count()
    code, out, err = run_cli(*glue_args(tiny_model, FIXTURES, tmp_path / "w",
                                        f"--config.mesh.shape=({n + 1},1,1)"))
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"mesh shape ({n + 1}, 1, 1) needs {n + 1} devices" in err


@pytest.mark.slow
def test_predict_errors(sweep, tiny_model, tmp_path):
    export = sweep["export"] / "MNLI"
    code, _, err = run_cli("predict", "--model", export, "--task", "SST-2", "a text")
    assert code == 2 and f"--task SST-2: {export} was fine-tuned on MNLI" in err
    # The label count is still checked where the model does not name its task.
    unnamed = tmp_path / "unnamed"
    shutil.copytree(export, unnamed)
    hf = json.loads((unnamed / "config.json").read_text())
    del hf["finetuning_task"]
    (unnamed / "config.json").write_text(json.dumps(hf))
    code, _, err = run_cli("predict", "--model", unnamed, "--task", "SST-2", "a text")
    assert code == 2 and "predicts 3 labels but SST-2 has 2" in err
    code, _, err = run_cli("predict", "--model", tiny_model, "--task", "RTE", "a", "b")
    assert code == 2 and "no classifier weights" in err
    (tmp_path / "bad.tsv").write_text("a\tb\nonly one column\n")
    code, _, err = run_cli("predict", "--model", export, "--input", tmp_path / "bad.tsv")
    assert code == 2 and "bad.tsv:2: expected 2 tab-separated columns" in err
    code, _, err = run_cli("predict", "--model", export, "just one text")
    assert code == 2 and "takes sentence pairs" in err


def test_parse_helpers():
    assert glue_sweep.parse_tasks("all") == list(tasks.GLUE_TASKS)
    assert glue_sweep.parse_tasks("rte, sst2,RTE") == ["RTE", "SST-2"]
    assert glue_sweep.parse_lrs("2e-5,3e-5,2e-5") == (2e-5, 3e-5)
    assert glue_sweep.run_dir("w", "sst2", 2e-5, 3) == Path("w/SST-2/lr2e-05_seed3")
