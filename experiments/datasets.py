"""Which pre-training datasets a variant needs, named by what makes them differ.

Every variant reads data made from the same corpus with the same seed; only the
settings that change the bytes on disk give a variant its own directory: the pair task
of the variant's objective (bert_jax/heads.py OBJECTIVES: NSP pairs, SOP pairs or single
segments), static or dynamic masks, and for static masks the masking rate and
whole-word masking; the sequence length (128, or 512 for phase 2); the number of
predictions per sequence (`ceil(length x rate)`: 20 at 128 and 15%, as the original).
Dynamic data carries no masks (the loader draws them with the config's rate and
whole-word setting), so those two settings do not split it. Datasets live under
`<study>/data/<name>` and are made once; variants with equal specs share them.

Held-out data ("eval", scored during pre-training) has the variant's pair task and
static masks at the study's reference rate (15%, sub-word). The final held-out score of
every variant uses one set, `reference(study)`: the base objective's eval data, so the
MLM numbers of all variants come from the same masked positions.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import ml_collections

from bert_jax import heads


@dataclasses.dataclass(frozen=True)
class DataSpec:
    split: str  # "train" or "eval": which text of the corpus
    max_seq_length: int
    pair: str  # the objective's pair task: "nsp", "sop" or "none" (single segments)
    masking: str  # "static" or "dynamic"
    masked_lm_prob: float | None  # static only
    whole_word: bool | None  # static only
    max_predictions: int

    @property
    def name(self) -> str:
        """A readable directory name, e.g. `train128-nsp-static-p15-sub-mp20`."""
        pair = self.pair if self.pair != "none" else "single"
        parts = [f"{self.split}{self.max_seq_length}", pair, self.masking]
        if self.masking == "static":
            parts += [f"p{round(self.masked_lm_prob * 100):d}",
                      "wwm" if self.whole_word else "sub"]
        return "-".join(parts + [f"mp{self.max_predictions}"])


def max_predictions(max_seq_length: int, masked_lm_prob: float) -> int:
    """Room for every masked position: 20 at (128, 15%), 52 at (128, 40%), 77 at 512."""
    return math.ceil(round(max_seq_length * masked_lm_prob, 6))


def _spec(split: str, length: int, nsp: bool, masking: str, prob: float,
          whole_word: bool) -> DataSpec:
    static = masking == "static"
    return DataSpec(split, length, nsp, masking, prob if static else None,
                    whole_word if static else None, max_predictions(length, prob))


def specs(cfg: ml_collections.ConfigDict, study: ml_collections.ConfigDict
          ) -> dict[str, DataSpec]:
    """The datasets pre-training config `cfg` needs, by its data field (train, eval,
    and train_phase2/eval_phase2 when it has a second phase)."""
    d, corpus, ev = cfg.data, study.corpus, study.eval
    pair = heads.config_spec(cfg).pair
    masking = d.masking or "static"
    lengths = {"": int(corpus.max_seq_length)}
    if int(cfg.train.phase2_start) > 0:
        lengths["_phase2"] = int(corpus.max_seq_length_phase2)
    out = {}
    for suffix, length in lengths.items():
        out[f"train{suffix}"] = _spec("train", length, pair, masking,
                                      float(d.masked_lm_prob), bool(d.whole_word_masking))
        out[f"eval{suffix}"] = _spec("eval", length, pair, "static",
                                     float(ev.masked_lm_prob), bool(ev.whole_word_masking))
    return out


def reference(study: ml_collections.ConfigDict) -> DataSpec:
    """The held-out set every variant's final MLM score uses: the base objective's."""
    return specs(study.pretrain, study)["eval"]


def attach(cfg: ml_collections.ConfigDict, study: ml_collections.ConfigDict,
           data_root: str | Path) -> ml_collections.ConfigDict:
    """`cfg` with its data fields pointing at the datasets `specs` names, in place."""
    for field, spec in specs(cfg, study).items():
        cfg.data[field] = str(Path(data_root) / spec.name)
    return cfg
