"""The `bert-jax` command: one subcommand per job, the same flags everywhere.

Each subcommand lives in a module of `bert_jax.commands` that exposes
`register(subparsers)`; the modules import JAX and friends only inside their run
functions, so `bert-jax --help` is instant. Shared conventions (see `add_common`):
`--config FILE[:ARG]` plus `--config.a.b=value` overrides, `--workdir DIR`,
`--model NAME_OR_DIR`, `--json` for machine-readable output.

A `UserError` (or a missing file) prints one line, `error: ...`, and exits 2; set
BERT_JAX_TRACEBACK=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from bert_jax.errors import UserError

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES = (
    "bert_jax.commands.inference",  # fill-mask, embed, nsp, attention
    "bert_jax.commands.convert",  # convert
    "bert_jax.commands.data",  # train-vocab, create-data
    "bert_jax.commands.pretrain",  # pretrain, export
    "bert_jax.commands.evaluate",  # evaluate
    "bert_jax.commands.glue",  # glue, predict
)


def add_common(parser: argparse.ArgumentParser, *, config: str | None = None,
               workdir: bool = False, model: bool = False, json: bool = False,
               model_required: bool = True) -> None:
    """Adds the flags every subcommand spells the same way."""
    if config is not None:
        parser.add_argument("--config", default=config,
                            help=f"config file and preset, FILE[:ARG] (default {config}); "
                                 "override any field with --config.FIELD=VALUE")
    if workdir:
        parser.add_argument("--workdir", required=True,
                            help="directory for checkpoints, logs and the resolved config; "
                                 "an existing run there is resumed")
    if model:
        parser.add_argument("--model", required=model_required,
                            help="hub name (e.g. bert-base-cased), local HF/TF directory, "
                                 "or a bert-jax workdir")
    if json:
        parser.add_argument("--json", action="store_true",
                            help="print JSON (one object per line) instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert-jax",
        description="BERT in JAX: pre-training, GLUE fine-tuning, released weights, inference.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # a command group not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `--config.a.b=value` overrides are not argparse flags: split them off first.
    overrides = [a for a in argv if a.startswith("--config.")]
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    args.config_overrides = overrides
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if overrides and not hasattr(args, "config"):
        parser.error(f"{args.command} takes no --config overrides")
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as e:
        if os.environ.get("BERT_JAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
