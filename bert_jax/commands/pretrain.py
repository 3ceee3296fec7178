"""`bert-jax pretrain` (the main job) and `bert-jax export` (a checkpoint -> HF files)."""

from __future__ import annotations

import argparse
import json

from bert_jax.cli import add_common

DEFAULT_CONFIG = "configs/pretrain.py:demo"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train BERT (MLM + NSP or SOP); resumes a workdir",
                       description="Pre-train BERT with the config's recipe. Re-running with "
                                   "the same --workdir resumes from its last checkpoint.")
    add_common(p, config=DEFAULT_CONFIG, workdir=True, json=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_pretrain)

    p = sub.add_parser("export", help="export a pre-training checkpoint to HF safetensors",
                       description="Write <workdir>'s latest (or --step) checkpoint as an HF "
                                   "directory (config.json, model.safetensors, vocab.txt) that "
                                   "transformers' BertForPreTraining loads.")
    add_common(p, workdir=True, json=True)
    p.add_argument("--to", required=True, help="output directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.set_defaults(func=run_export)


def run_pretrain(args: argparse.Namespace) -> int:
    import logging

    from bert_jax import configlib
    from bert_jax.train import pretrain

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = configlib.load(args.config, args.config_overrides)
    result = pretrain.run(config, args.workdir, progress=not args.no_progress)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        keys = ("loss", "masked_lm_accuracy", "eval_masked_lm_accuracy",
                "next_sentence_accuracy", "eval_next_sentence_accuracy",
                "sentence_order_accuracy", "eval_sentence_order_accuracy", "seq_per_s")
        print("done: " + ", ".join(f"{k} {result[k]:.4f}" for k in keys if k in result))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bert_jax import checkpoint, configlib, heads, weights
    from bert_jax.errors import UserError
    from bert_jax.tokenizer import Tokenizer

    config = configlib.load_saved(args.workdir)
    params, step = checkpoint.restore_params(Path(args.workdir) / "checkpoints", args.step)
    if not config.data.vocab:
        raise UserError(f"{args.workdir}/config.json names no data.vocab to export beside "
                        "the weights; set --config.data.vocab when pre-training")
    tokenizer = Tokenizer.from_vocab(config.data.vocab)
    head = heads.objective(heads.config_objective(config)).head
    weights.save_pretrained(args.to, configlib.model_config(config.model), params, tokenizer,
                            head)
    result = {"workdir": str(args.workdir), "step": step, "to": str(args.to)}
    print(json.dumps(result) if args.json else f"exported step {step} to {args.to}")
    return 0
