"""`bert-jax evaluate`: a model's MLM and NSP (or SOP) metrics on held-out data.

    bert-jax evaluate --model runs/demo --data runs/demo/data/eval
    bert-jax evaluate --model bert-base-cased --data data/eval128 --json

--model is a hub name, an HF or TF checkpoint directory, or a bert-jax workdir; --data a
directory made by `bert-jax create-data` with the model's vocab. It prints
masked_lm_accuracy, masked_lm_loss and, when the model has the pair head and the data
has pairs, next_sentence_* (NSP data) or sentence_order_* (SOP data).
"""

from __future__ import annotations

import argparse
import json

from bert_jax.cli import add_common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="MLM and NSP/SOP metrics of a model on held-out data",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, model=True, json=True)
    p.add_argument("--data", required=True, help="a directory made by `bert-jax create-data`")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (default 32)")
    p.add_argument("--max-batches", type=int, default=None,
                   help="score only the first N batches (default: every example)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bert_jax.errors import UserError
    from bert_jax.train.evaluate import evaluate

    if args.batch_size < 1 or (args.max_batches is not None and args.max_batches < 1):
        raise UserError("--batch-size and --max-batches must be at least 1")
    result = evaluate(args.model, args.data, batch_size=args.batch_size,
                      max_batches=args.max_batches, progress=not args.no_progress)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    step = "" if result["checkpoint_step"] is None else f", step {result['checkpoint_step']}"
    print(f"{result['model']} ({result['head']} head, objective {result['objective']}{step}) "
          f"on {result['data']}: {result['examples']:,} examples")
    for key in sorted(k for k, v in result.items() if isinstance(v, float)):
        print(f"  {key:24s} {result[key]:.4f}")
    return 0
