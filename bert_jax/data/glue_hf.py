"""GLUE through the HuggingFace `datasets` library (optional; needs it installed and online).

    examples = glue_hf.load_hf_dataset("MNLI", "dev_matched")   # list[glue.Example]

Gives the same `Example`s as `glue.read_split`: splits keep bert-jax's names (dev ->
"validation"), and labels are re-indexed by name into `TaskSpec.labels`, since `datasets`
orders MNLI's as entailment, neutral, contradiction.
"""

from __future__ import annotations

from bert_jax.data.glue import Example, TaskSpec, get_task
from bert_jax.errors import UserError

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
