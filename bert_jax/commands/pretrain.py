"""`bert-jax pretrain` (the main job) and `bert-jax export` (a checkpoint -> HF files)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from bert_jax.cli import add_common
from bert_jax.errors import EXIT_RESUMABLE, Stopped

DEFAULT_CONFIG = "configs/pretrain.py:demo"
PRETRAIN_HELP = f"""\
Pre-train BERT with the config's recipe. Re-running with the same --workdir resumes from
its newest checkpoint that restores (a damaged one is skipped, with a line saying why).
Ctrl-C or SIGTERM saves the current step and exits with status {EXIT_RESUMABLE} (resumable); a
finished run exits 0.

Presets (--config configs/pretrain.py:PRESET):
  demo       (default) a small BERT on the packaged demo corpus, built in the workdir;
             600 steps, about 2 minutes on a 2-core CPU
  base       bert-base as released: 1M steps, seq 128 then 512 from step 900k
  base_128   bert-base, seq 128 only
  large      bert-large, the same recipe
  lamb       bert-base, LAMB with batch 64k/32k (You et al.)
  tiny       the test preset (two short phases on data you supply)

A shorter run: --config.train.total_steps=100 (with --config.train.phase2_start=0 for a
single phase); --config.train.checkpoint_every=N and --config.train.eval_every=N set how
often it saves and evaluates. Any field: --config.FIELD=VALUE (see configs/pretrain.py).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train BERT (MLM + NSP or SOP); resumes a workdir",
                       description=PRETRAIN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, config=DEFAULT_CONFIG, json=True,
               workdir="directory for checkpoints, metrics and the resolved config; an "
                       "existing run there is resumed from its newest good checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_pretrain)

    p = sub.add_parser("export", help="export a pre-training checkpoint to HF safetensors",
                       description="Write <workdir>'s newest checkpoint that restores (or --step) "
                                   "as an HF "
                                   "directory (config.json, model.safetensors, vocab.txt) that "
                                   "transformers' BertForPreTraining loads.")
    add_common(p, json=True, workdir="a `bert-jax pretrain` workdir to read (nothing in it "
                                     "is changed)")
    p.add_argument("--to", required=True, help="output directory")
    p.add_argument("--step", type=int, default=None,
                   help="checkpoint step (default: the newest that restores)")
    p.set_defaults(func=run_export)


def run_pretrain(args: argparse.Namespace) -> int:
    from bert_jax import configlib, files
    from bert_jax.train import pretrain

    files.check_writable_dir(args.workdir, "--workdir", create=False)
    config = configlib.load(args.config, args.config_overrides, like=DEFAULT_CONFIG)
    try:
        result = pretrain.run(config, args.workdir, progress=not args.no_progress)
    except Stopped as stopped:
        # One line: what happened, where the step is saved, the command that resumes.
        resume = shlex.join(["bert-jax", "pretrain", "--config", args.config, "--workdir",
                             str(args.workdir), *args.config_overrides])
        print(f"stopped ({stopped.reason}): saved step {stopped.step} in "
              f"{stopped.checkpoint_dir}; resume with: {resume}", file=sys.stderr)
        return EXIT_RESUMABLE
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        keys = ("loss", "masked_lm_accuracy", "eval_masked_lm_accuracy",
                "next_sentence_accuracy", "eval_next_sentence_accuracy",
                "sentence_order_accuracy", "eval_sentence_order_accuracy", "seq_per_s")
        print("done: " + ", ".join(f"{k} {result[k]:.4f}" for k in keys if k in result))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from bert_jax import checkpoint, configlib, heads, weights
    from bert_jax.errors import UserError
    from bert_jax.runs import RunDir
    from bert_jax.tokenizer import Tokenizer

    run = RunDir(args.workdir)
    config = configlib.load_saved(args.workdir)
    if "data" not in config or not run.has_checkpoints():
        raise UserError(f"--workdir {args.workdir} is not a `bert-jax pretrain` workdir (it "
                        "needs config.json and checkpoints/); to convert a model directory "
                        "use `bert-jax convert`")
    if not config.data.vocab:
        raise UserError(f"{args.workdir}/config.json names no data.vocab to export beside "
                        "the weights; set --config.data.vocab when pre-training")
    tokenizer = Tokenizer.from_vocab(config.data.vocab)
    model_config = run.model_config(config.to_dict())
    weights.check_vocab_rows(tokenizer.vocab_size, model_config.vocab_size, config.data.vocab)
    ckpt_dir = run.checkpoints
    params, step = checkpoint.restore_params(ckpt_dir, args.step)
    head = heads.config_spec(config).head
    # Through the loader's checks: a config.json edited since the run (or from another
    # run) must not be written beside weights it does not describe.
    params, _ = weights.hf_to_flax(weights.flax_to_hf(params, vocab_size=model_config.vocab_size),
                                   model_config, head,
                                   source=str(ckpt_dir / str(step)),
                                   format="bert-jax checkpoint")
    weights.save_pretrained(args.to, model_config, params, tokenizer, head)
    result = {"workdir": str(args.workdir), "step": step, "to": str(args.to)}
    print(json.dumps(result) if args.json else f"exported step {step} to {args.to}")
    return 0
