"""GLUE tasks: the registry, and readers for the original TSV files and the hub copy.

    task = tasks.get_task("sst2")                        # -> TASKS["SST-2"]
    train = tasks.read_split(task, "glue_data", "train")  # list[Example]
    dev = tasks.load_hf_dataset("MNLI", "dev_matched")    # the same, via `datasets`

`data_dir` is a directory in the original GLUE layout (`CoLA/train.tsv`, `MNLI/dev_matched.tsv`,
...; the diagnostic set AX as `diagnostic/diagnostic.tsv` or `AX/test.tsv`). Files are split on
tabs with quoting off: several GLUE files hold bare `"` that a csv reader would join across rows.

Labels are indices into `TaskSpec.labels`, which spells them as the GLUE files do. MNLI and AX
use run_classifier's order (contradiction, entailment, neutral); `datasets`' GLUE uses another,
which `load_hf_dataset` maps. STS-B is regression: a float score in [0, 5], `labels` is None.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from bert_jax.errors import UserError

BINARY = ("0", "1")
NLI = ("contradiction", "entailment", "neutral")  # run_classifier's MnliProcessor order
QA_NLI = ("entailment", "not_entailment")


@dataclasses.dataclass(frozen=True)
class Layout:
    """The columns of one kind of GLUE file and where the fields of an example sit."""

    columns: tuple[str, ...]  # the header names (also the column count of every row)
    text_a: int
    text_b: int | None = None
    label: int | None = None  # None: an unlabelled (test) file
    index: int | None = None  # the row's own id column, kept as the example's guid


@dataclasses.dataclass(frozen=True, eq=False)  # registry singletons: hashed by identity
class TaskSpec:
    """One GLUE task: its labels, metrics, files and test-server names."""

    name: str  # the canonical spelling, also the directory name in the GLUE layout
    labels: tuple[str, ...] | None  # GLUE's label spellings; None for regression (STS-B)
    metrics: tuple[str, ...]  # keys of metrics.compute over the dev splits
    layouts: dict[str, Layout]  # split -> columns
    files: dict[str, tuple[str, ...]]  # split -> candidate paths under data_dir, first canonical
    submission: dict[str, str]  # test split -> file name the GLUE server takes
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    train_split: str | None = "train"
    in_glue_score: bool = True  # AX is predicted and submitted but not averaged

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Width of the classifier head: 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.layouts)


@dataclasses.dataclass(frozen=True)
class Example:
    """One GLUE row. `label` is an index into `TaskSpec.labels`, a float for STS-B, None in
    test files. `guid` is the file's own id column (the `index` a submission needs) where it
    has one, else `<split>-<row>` with the 0-based row number."""

    guid: str
    text_a: str
    text_b: str | None
    label: int | float | None


def _task(name: str, labels: tuple[str, ...] | None, metrics: tuple[str, ...],
          labelled: Layout, test: Layout, **kwargs) -> TaskSpec:
    """A task in the common train/dev/test layout."""
    return TaskSpec(
        name=name, labels=labels, metrics=metrics,
        layouts={"train": labelled, "dev": labelled, "test": test},
        files={s: (f"{name}/{s}.tsv",) for s in ("train", "dev", "test")},
        submission={"test": f"{name}.tsv"}, **kwargs)


def _pair_nli(name: str, labels: tuple[str, ...], first: str, second: str) -> TaskSpec:
    """QNLI, RTE, WNLI: `index first second label`, test without the label."""
    columns = ("index", first, second)
    return _task(name, labels, ("accuracy",),
                 Layout(columns + ("label",), text_a=1, text_b=2, label=3, index=0),
                 Layout(columns, text_a=1, text_b=2, index=0))


_STSB_COLUMNS = ("index", "genre", "filename", "year", "old_index", "source1", "source2",
                 "sentence1", "sentence2")
_MNLI_COLUMNS = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                 "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
                 "sentence1", "sentence2")
_MNLI_TRAIN = Layout(_MNLI_COLUMNS + ("label1", "gold_label"), 8, 9, label=11, index=0)
_MNLI_DEV = Layout(_MNLI_COLUMNS + tuple(f"label{i}" for i in range(1, 6)) + ("gold_label",),
                   8, 9, label=15, index=0)
_MNLI_TEST = Layout(_MNLI_COLUMNS, 8, 9, index=0)
_AX_TEST = Layout(("index", "sentence1", "sentence2"), 1, 2, index=0)

_TASK_LIST = (
    _task("CoLA", BINARY, ("mcc",),
          # train/dev have no header; the third column is the original author's mark.
          Layout(("source", "label", "original_label", "sentence"), text_a=3, label=1),
          Layout(("index", "sentence"), text_a=1, index=0)),
    _task("SST-2", BINARY, ("accuracy",),
          Layout(("sentence", "label"), text_a=0, label=1),
          Layout(("index", "sentence"), text_a=1, index=0)),
    _task("MRPC", BINARY, ("f1", "accuracy"),
          Layout(("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), 3, 4, label=0),
          Layout(("index", "#1 ID", "#2 ID", "#1 String", "#2 String"), 3, 4, index=0)),
    _task("STS-B", None, ("pearson", "spearman"),
          Layout(_STSB_COLUMNS + ("score",), 7, 8, label=9, index=0),
          Layout(_STSB_COLUMNS, 7, 8, index=0)),
    _task("QQP", BINARY, ("f1", "accuracy"),
          Layout(("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), 3, 4,
                 label=5, index=0),
          Layout(("id", "question1", "question2"), 1, 2, index=0)),
    TaskSpec(
        name="MNLI", labels=NLI, metrics=("matched_accuracy", "mismatched_accuracy"),
        layouts={"train": _MNLI_TRAIN, "dev_matched": _MNLI_DEV, "dev_mismatched": _MNLI_DEV,
                 "test_matched": _MNLI_TEST, "test_mismatched": _MNLI_TEST},
        files={s: (f"MNLI/{s}.tsv",) for s in
               ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")},
        submission={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
        dev_splits=("dev_matched", "dev_mismatched"),
        test_splits=("test_matched", "test_mismatched")),
    _pair_nli("QNLI", QA_NLI, "question", "sentence"),
    _pair_nli("RTE", QA_NLI, "sentence1", "sentence2"),
    _pair_nli("WNLI", BINARY, "sentence1", "sentence2"),
    # The diagnostic set: test only, MNLI's labels, predicted by the MNLI model. Its
    # leaderboard metric is the 3-class Matthews correlation (labels are not public).
    TaskSpec(
        name="AX", labels=NLI, metrics=("mcc",), layouts={"test": _AX_TEST},
        files={"test": ("diagnostic/diagnostic.tsv", "AX/test.tsv", "AX/AX.tsv", "AX.tsv")},
        submission={"test": "AX.tsv"}, dev_splits=(), train_split=None, in_glue_score=False),
)

TASKS: dict[str, TaskSpec] = {t.name: t for t in _TASK_LIST}
# The nine tasks the GLUE score averages, in the leaderboard's order (`--task all`).
GLUE_TASKS: tuple[str, ...] = tuple(t.name for t in _TASK_LIST if t.in_glue_score)

_ALIASES = {"diagnostic": "AX", "diagnostics": "AX", "sst": "SST-2", "sts": "STS-B"}


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The task named `name`, matched ignoring case and punctuation ("sst2", "sts-b")."""
    if isinstance(name, TaskSpec):
        return name
    key = _normal(name)
    for task in TASKS.values():
        if _normal(task.name) == key:
            return task
    if key in _ALIASES:
        return TASKS[_ALIASES[key]]
    raise UserError(f"unknown GLUE task {name!r}: choose one of {', '.join(TASKS)}")


def split_path(task: str | TaskSpec, data_dir: str | Path, split: str) -> Path:
    """The file holding `split` of `task` under `data_dir` (the GLUE layout)."""
    task = get_task(task)
    if split not in task.files:
        raise UserError(f"{task.name} has no split {split!r}: choose one of "
                        f"{', '.join(task.files)}")
    data_dir = Path(data_dir)
    candidates = [data_dir / f for f in task.files[split]]
    for path in candidates:
        if path.is_file():
            return path
    others = "" if len(candidates) == 1 else f" (or {', '.join(map(str, candidates[1:]))})"
    raise UserError(f"{task.name} {split} file not found: expected {candidates[0]}{others}; "
                    "--data-dir must be a directory in the GLUE layout (CoLA/, SST-2/, ...)")


def has_split(task: str | TaskSpec, data_dir: str | Path, split: str) -> bool:
    """Whether `data_dir` holds the file of `split` (e.g. QNLI without train.tsv)."""
    task = get_task(task)
    return any((Path(data_dir) / f).is_file() for f in task.files.get(split, ()))


def read_split(task: str | TaskSpec, data_dir: str | Path, split: str) -> list[Example]:
    """Every example of one split, read from the GLUE TSV file."""
    task = get_task(task)
    return read_tsv(task, split_path(task, data_dir, split), split)


def read_tsv(task: str | TaskSpec, path: str | Path, split: str) -> list[Example]:
    """Examples from one GLUE TSV file laid out as `split` of `task` (any path)."""
    task = get_task(task)
    if split not in task.layouts:
        raise UserError(f"{task.name} has no split {split!r}: choose one of "
                        f"{', '.join(task.layouts)}")
    layout = task.layouts[split]
    path = Path(path)
    # utf-8-sig drops MRPC's byte-order mark; newline="\n" keeps a stray \r inside a field.
    with open(path, encoding="utf-8-sig", newline="\n") as f:
        lines = [line[:-1] if line.endswith("\n") else line for line in f]
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    while lines and not lines[-1]:  # a trailing blank line is an editor's, not a row
        lines.pop()
    examples = []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split("\t")
        if lineno == 1 and fields[0].strip().lower() == layout.columns[0].lower():
            _check_width(fields, layout, path, lineno)
            continue  # the header (CoLA train/dev have none; any other file may lack it)
        _check_width(fields, layout, path, lineno)
        examples.append(_example(task, layout, fields, split, len(examples), path, lineno))
    if not examples:
        raise UserError(f"{path} is empty: no {task.name} examples in it; "
                        "check the file (a GLUE download may have been interrupted)")
    return examples


def _check_width(fields: list[str], layout: Layout, path: Path, lineno: int) -> None:
    if len(fields) != len(layout.columns):
        raise UserError(
            f"{path}:{lineno}: expected {len(layout.columns)} tab-separated columns "
            f"({' | '.join(layout.columns)}), found {len(fields)}; the file is damaged or "
            "not this task's and split's GLUE file")


def _example(task: TaskSpec, layout: Layout, fields: list[str], split: str, row: int,
             path: Path, lineno: int) -> Example:
    guid = fields[layout.index] if layout.index is not None else f"{split}-{row}"
    if layout.label is None and not guid.strip().isdigit():
        # The test server matches predictions by this index; a non-number means a
        # misnamed header or a shifted row.
        raise UserError(f"{path}:{lineno}: index {guid!r} is not a non-negative integer")
    text_b = fields[layout.text_b] if layout.text_b is not None else None
    label = None
    if layout.label is not None:
        label = _label(task, fields[layout.label], path, lineno)
    return Example(guid.strip(), fields[layout.text_a], text_b, label)


def _label(task: TaskSpec, raw: str, path: Path, lineno: int) -> int | float:
    value = raw.strip()
    if task.labels is None:
        try:
            score = float(value)
        except ValueError:
            raise UserError(f"{path}:{lineno}: {task.name} score {raw!r} is not a number "
                            "(expected a similarity in [0, 5])") from None
        if not 0.0 <= score <= 5.0:
            raise UserError(f"{path}:{lineno}: {task.name} score {score} is outside [0, 5]")
        return score
    try:
        return task.labels.index(value)
    except ValueError:
        raise UserError(f"{path}:{lineno}: unknown {task.name} label {raw!r}; allowed: "
                        f"{', '.join(task.labels)}") from None


# ---- the HuggingFace `datasets` copy (optional; needs it installed and online) -----------

# bert-jax task -> (datasets config, text columns)
_CONFIGS = {
    "CoLA": ("cola", ("sentence", None)),
    "SST-2": ("sst2", ("sentence", None)),
    "MRPC": ("mrpc", ("sentence1", "sentence2")),
    "STS-B": ("stsb", ("sentence1", "sentence2")),
    "QQP": ("qqp", ("question1", "question2")),
    "MNLI": ("mnli", ("premise", "hypothesis")),
    "QNLI": ("qnli", ("question", "sentence")),
    "RTE": ("rte", ("sentence1", "sentence2")),
    "WNLI": ("wnli", ("sentence1", "sentence2")),
    "AX": ("ax", ("premise", "hypothesis")),
}
# `datasets`' label names -> GLUE's spellings (the ones not spelt alike).
_LABEL_NAMES = {"unacceptable": "0", "acceptable": "1", "negative": "0", "positive": "1",
                "not_equivalent": "0", "equivalent": "1", "not_duplicate": "0",
                "duplicate": "1"}
_WNLI_LABELS = {"not_entailment": "0", "entailment": "1"}


def hf_split(task: TaskSpec, split: str) -> str:
    """bert-jax's split name -> the `datasets` one (dev -> validation)."""
    if split not in task.layouts:
        raise UserError(f"{task.name} has no split {split!r}: choose one of "
                        f"{', '.join(task.layouts)}")
    return split.replace("dev", "validation")


def load_hf_dataset(task: str | TaskSpec, split: str) -> list[Example]:
    """One split of a GLUE task from the `datasets` hub copy, as `Example`s."""
    task = get_task(task)
    try:
        import datasets
    except ImportError:
        raise UserError("loading GLUE from the hub needs the `datasets` library: "
                        "pip install datasets (or pass --data-dir with the GLUE TSVs)") from None
    config, (col_a, col_b) = _CONFIGS[task.name]
    try:
        ds = datasets.load_dataset("glue", config, split=hf_split(task, split))
    except Exception as e:  # network and hub failures come in many types
        raise UserError(f"cannot load glue/{config} {split} with `datasets`: {e}") from None
    names = None
    if task.labels is not None:
        names = ds.features["label"].names
        spell = _WNLI_LABELS if task.name == "WNLI" else _LABEL_NAMES
        names = [task.labels.index(spell.get(n, n)) for n in names]
    examples = []
    for row in ds:
        label = row["label"]
        if label < 0:  # -1 marks the unlabelled test rows
            label = None
        elif task.labels is None:
            label = float(label)
        else:
            label = names[label]
        examples.append(Example(str(row["idx"]), row[col_a],
                                None if col_b is None else row[col_b], label))
    return examples
