"""The ablation variants: each one is a few overrides of one base pre-training config.

A variant is a dict `{"dotted.field": value}` applied to the study's base config (the
`pretrain` section of experiments/ablation.py) once the step budget is set; a value
`of_total(f)` stands for `f x train.total_steps`, so a schedule keeps its shape under
any budget. The base is the original objective at sequence length 128:

  mlm_nsp          MLM + NSP, static 15% sub-word masks, seq 128 only, BERT Adam (no bias
                   correction): the base itself, no overrides
  mlm_only         no NSP: no NSP head, data of single segments filling the length
  mlm_sop          ALBERT's sentence-order prediction instead of NSP (pairs from one
                   document, in or out of order)
  dynamic_masking  fresh masks each time an example is seen (RoBERTa), not fixed ones
  whole_word       all WordPieces of a chosen word are masked together
  mask_40          masking rate 40% instead of 15% (Wettig et al. 2022)
  two_phase        the paper's schedule: seq 128, then 512 for the last 10% of the steps
  adamw            AdamW with bias correction instead of BERT Adam
  random_init      no pre-training (0 steps): the initial weights, fine-tuned the same way;
                   the floor every objective must beat

The data a variant needs follows from its objective (bert_jax/heads.py OBJECTIVES: the
objective's pair task), not from any one field (experiments/datasets.py).

    cfg = resolve(study, "mlm_only", steps=300)   # the variant's pre-training config
    diff(resolve(study, "mlm_nsp", 300), cfg)     # -> ["objective"]

Data paths are not set here: `datasets.attach` fills them from the data the variant's
settings call for (experiments/datasets.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from bert_jax import configlib
from bert_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class OfTotal:
    """A step count given as a fraction of `train.total_steps`."""

    fraction: float

    def steps(self, total_steps: int) -> int:
        return int(round(self.fraction * total_steps))


def of_total(fraction: float) -> OfTotal:
    return OfTotal(fraction)


BASELINE = "mlm_nsp"

VARIANTS: dict[str, dict[str, Any]] = {
    "mlm_nsp": {},
    "mlm_only": {"objective": "mlm"},
    "mlm_sop": {"objective": "mlm_sop"},
    "dynamic_masking": {"data.masking": "dynamic"},
    "whole_word": {"data.whole_word_masking": True},
    "mask_40": {"data.masked_lm_prob": 0.4},
    "two_phase": {"train.phase2_start": of_total(0.9)},
    "adamw": {"optimizer.name": "adamw"},
    "random_init": {"train.total_steps": 0},
}


def names(text: str) -> list[str]:
    """Variant names from a comma-separated list (`--variants`, a study's `variants`)."""
    return [n.strip() for n in str(text).split(",") if n.strip()]


def pretrains(cfg: ml_collections.ConfigDict) -> bool:
    """False for a variant of no pre-training steps (random_init): its weights are the
    initialisation, saved as a step-0 checkpoint."""
    return int(cfg.train.total_steps) > 0


def apply_budget(cfg: ml_collections.ConfigDict, budget: ml_collections.ConfigDict,
                 steps: int) -> None:
    """Sets the step count and the step-valued fields that scale with it, in place."""
    cfg.train.total_steps = int(steps)
    cfg.optimizer.warmup_steps = of_total(budget.warmup_fraction).steps(steps)
    cfg.train.eval_every = max(1, steps // int(budget.evals))
    cfg.train.checkpoint_every = max(1, steps // int(budget.checkpoints))


def resolve(study: ml_collections.ConfigDict, name: str, steps: int
            ) -> ml_collections.ConfigDict:
    """The pre-training config of variant `name` under a budget of `steps` steps."""
    if name not in VARIANTS:
        raise UserError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    cfg = study.pretrain.copy_and_resolve_references()
    apply_budget(cfg, study.budget, steps)
    overrides = [f"{key}={value.steps(steps) if isinstance(value, OfTotal) else value!r}"
                 for key, value in VARIANTS[name].items()]
    configlib.apply_overrides(cfg, overrides)
    return cfg


def flatten(cfg: ml_collections.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
    """`{"a.b": value}` for every leaf of a (nested) config."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def diff(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> list[str]:
    """The dotted names of the fields whose values differ between two configs."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in fa.keys() | fb.keys() if k not in fa or k not in fb or fa[k] != fb[k])


def describe(name: str) -> str:
    """A variant's overrides as one line, e.g. `objective=mlm`; the base reads `(base)`."""
    items = VARIANTS[name].items()
    parts = [f"{k}={f'{v.fraction:g}*total_steps' if isinstance(v, OfTotal) else v}"
             for k, v in items]
    return ", ".join(parts) or "(base)"
