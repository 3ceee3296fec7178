"""The registry of heads and pre-training objectives: each one declared once, here.

A *head* is what sits on the encoder: its module in `bert_jax.model`, the class
transformers calls it (config.json "architectures"), and the weight-name prefix that
marks a checkpoint saved with it. `model.build`, `weights` (import, export, head
detection) and `inference` read `HEADS`.

An *objective* is what pre-training minimises: a head, the sentence-pair task its data
carries (`create-data --pair-objective`: nsp, sop or none) and the name its pair
metrics are reported under. `pretrain`, `export` and `evaluate` read `OBJECTIVES`.
Adding ELECTRA-style replaced-token detection would be one `Head` line (with its
module) and one `Objective` line (with its loss in train/objectives.py).

This module imports neither JAX nor Flax, so the weight tools and the CLI can read it
cheaply; the modules are named, and `model.build` resolves them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bert_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Head:
    """One head: how to build it, and how released checkpoints name it."""

    module: str  # class in bert_jax.model
    architecture: str  # transformers class (HF config.json "architectures")
    marker: str | None  # HF weight-name prefix only checkpoints with this head have
    options: tuple[tuple[str, Any], ...] = ()  # keyword arguments of the module
    mlm: bool = False  # has the masked-LM head (cls.predictions)
    pair: bool = False  # has the sentence-pair head (cls.seq_relationship)
    not_exported: tuple[str, ...] = ()  # HF name prefixes the transformers class lacks


# Head detection takes the first head, in this order, whose marker a checkpoint has
# (a pre-training checkpoint holds the MLM head's tensors too).
HEADS: dict[str, Head] = {
    "classification": Head("BertForSequenceClassification", "BertForSequenceClassification",
                           "classifier."),
    "pretraining": Head("BertForPreTraining", "BertForPreTraining", "cls.seq_relationship.",
                        mlm=True, pair=True),
    # BertForMaskedLM has no pooler (an MLM-only model never trains it).
    "mlm": Head("BertForPreTraining", "BertForMaskedLM", "cls.predictions.",
                options=(("nsp", False),), mlm=True, not_exported=("bert.pooler.",)),
    "encoder": Head("BertModel", "BertModel", None),
}


def head(name: str) -> Head:
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; choose from {', '.join(HEADS)}")
    return HEADS[name]


def detect(names: list[str]) -> str:
    """The head a checkpoint was saved with, from its (canonical HF) tensor names."""
    for name, h in HEADS.items():
        if h.marker is None or any(n.startswith(h.marker) for n in names):
            return name
    raise AssertionError("unreachable: the encoder has no marker")


@dataclasses.dataclass(frozen=True)
class Objective:
    """One pre-training objective: MLM plus (unless pair is "none") a sentence-pair task."""

    head: str  # key of HEADS
    pair: str  # the data's pair task (create-data --pair-objective): nsp | sop | none
    pair_metric: str | None  # "<pair_metric>_loss" / "_accuracy" in the metrics

    def make(self, module: Any) -> Any:
        """The train/objectives.py objective over `module` (built for `self.head`)."""
        from bert_jax.train import objectives

        return objectives.PreTraining(module, pair=self.pair_metric)


OBJECTIVES: dict[str, Objective] = {
    "mlm_nsp": Objective("pretraining", "nsp", "next_sentence"),  # the original BERT
    "mlm": Objective("mlm", "none", None),  # RoBERTa-style: MLM only
    "mlm_sop": Objective("pretraining", "sop", "sentence_order"),  # ALBERT's SOP
}


def objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def config_objective(config: Any) -> str:
    """The objective a pre-training config names: `objective`, with `nsp=False` kept as
    an alias of "mlm" (configs saved before `objective` existed have only `nsp`)."""
    name = config.get("objective", "mlm_nsp")
    if not config.get("nsp", True):
        if name not in ("mlm_nsp", "mlm"):
            raise UserError(f"--config.nsp=False (an alias of objective=mlm) contradicts "
                            f"--config.objective={name}; set only the objective")
        name = "mlm"
    objective(name)
    return name


def config_spec(config: Any) -> Objective:
    """The registered objective a pre-training config names (see `config_objective`)."""
    return objective(config_objective(config))


def objective_for_data(head_name: str, pair: str) -> str:
    """The objective that scores a model with head `head_name` on data made with
    `--pair-objective pair`: its own pair task if it has that head, else MLM alone."""
    if not HEADS[head_name].mlm:
        raise UserError(f"the model has the {head_name} head, no masked-LM head to evaluate; "
                        "use a pre-training checkpoint (BertForPreTraining or BertForMaskedLM)")
    for name, o in OBJECTIVES.items():
        if o.head == head_name and o.pair == pair:
            return name
    return "mlm"
