r"""Held-out MLM accuracy split by the kind of masked piece: word starts and `##` pieces.

    python -m experiments.mlm_by_piece --study-dir runs/ablation-cpu \
        mlm_nsp/seed0 whole_word/seed0 [--json]

The study scores every variant on one reference set with sub-word masks. A model
pre-trained with whole-word masks never saw a masked continuation piece (`##ing`) whose
word start was visible, so that set asks it something new; this splits each run's
accuracy on the same set and checkpoint as its eval.json into word-start pieces and
continuation pieces, so the two effects can be told apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bert_jax.errors import UserError


def by_piece(predictions: np.ndarray, labels: np.ndarray, weights: np.ndarray,
             continuation: np.ndarray) -> dict[str, list[int]]:
    """{kind: [correct, positions]} for "start" and "continuation" pieces: `predictions`,
    `labels`, `weights` [B, P] (weight 0: padding), `continuation` [V] bool by token id."""
    real = weights > 0
    correct = (predictions == labels) & real
    cont = continuation[labels] & real
    start = real & ~cont
    return {"start": [int(correct[start].sum()), int(start.sum())],
            "continuation": [int(correct[cont].sum()), int(cont.sum())]}


def score(workdir: Path, eval_data: Path, batch_size: int = 64, max_batches: int = 0
          ) -> dict[str, Any]:
    """Accuracy overall, on word starts and on continuation pieces of `workdir`'s last
    checkpoint on `eval_data` (its stored masks), every example once (or the first
    `max_batches` batches)."""
    import jax

    from bert_jax import weights
    from bert_jax.data import PretrainingLoader
    from bert_jax.train.evaluate import check_data_vocab

    loaded = weights.load_pretrained(str(workdir), head="auto")
    if loaded.tokenizer is None:
        raise UserError(f"{workdir} has no vocab: word starts cannot be told from ## pieces")
    model, tok = loaded.model, loaded.tokenizer
    continuation = np.array([tok.id_to_token(i).startswith("##")
                             for i in range(loaded.config.vocab_size)])

    @jax.jit
    def predict(params: Any, batch: dict[str, Any]) -> jax.Array:
        out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                          batch["token_type_ids"], batch["masked_lm_positions"])
        return out.mlm_logits.argmax(-1)

    loader = PretrainingLoader(eval_data, batch_size, shuffle=False, repeat=False,
                               drop_remainder=False)
    check_data_vocab(loaded, loader, str(workdir), str(eval_data))
    totals = {"start": [0, 0], "continuation": [0, 0]}
    for i in range(min(len(loader), max_batches or len(loader))):
        b = loader.batch(0, i)
        counts = by_piece(np.asarray(predict(loaded.params, b)), b["masked_lm_ids"],
                          b["masked_lm_weights"], continuation)
        for kind, (c, n) in counts.items():
            totals[kind][0] += c
            totals[kind][1] += n
    correct = sum(c for c, _ in totals.values())
    positions = sum(n for _, n in totals.values())
    return {"accuracy": correct / positions, "positions": positions,
            **{f"{k}_accuracy": c / n if n else None for k, (c, n) in totals.items()},
            **{f"{k}_positions": n for k, (_, n) in totals.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.mlm_by_piece", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study-dir", required=True)
    p.add_argument("runs", nargs="+", help="<variant>/seed<k>, finished (with eval.json)")
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    args = p.parse_args(argv)
    study_dir = Path(args.study_dir)
    try:
        for run in args.runs:
            record = study_dir / run / "eval.json"
            if not record.exists():
                raise UserError(f"{record} does not exist: {run} is not evaluated yet")
            eval_data = Path(json.loads(record.read_text())["eval_data"])
            result = {"run": run, **score(study_dir / run / "pretrain", eval_data)}
            if args.json:
                print(json.dumps(result))
            else:
                print(f"{run}: {result['accuracy'] * 100:.2f}% of {result['positions']:,}; "
                      f"word starts {result['start_accuracy'] * 100:.2f}% "
                      f"({result['start_positions']:,}), ## pieces "
                      f"{result['continuation_accuracy'] * 100:.2f}% "
                      f"({result['continuation_positions']:,})")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
