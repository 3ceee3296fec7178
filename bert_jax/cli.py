"""The `bert-jax` command: one subcommand per job, the same flags everywhere.

Each subcommand lives in a module of `bert_jax.commands` that exposes
`register(subparsers)`; the modules import JAX and friends only inside their run
functions, so `bert-jax --help` is instant. Shared conventions (see `add_common`):
`--config FILE[:ARG]` plus `--config.a.b=value` overrides, `--workdir DIR`,
`--model NAME_OR_DIR`, `--json` for machine-readable output.

Every user mistake takes one path: a `UserError`, an `OSError` naming a file (missing,
unwritable, disk full) or a bad flag prints one line, `error: ...`, and exits 2; set
BERT_JAX_TRACEBACK=1 to see the traceback instead. Logging is set up here, once, for
every subcommand (INFO for bert-jax, WARNING for the libraries).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from bert_jax.errors import UserError, user_message

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES = (
    "bert_jax.commands.inference",  # fill-mask, embed, nsp, attention
    "bert_jax.commands.convert",  # convert
    "bert_jax.commands.data",  # train-vocab, create-data
    "bert_jax.commands.pretrain",  # pretrain, export
    "bert_jax.commands.evaluate",  # evaluate
    "bert_jax.commands.glue",  # glue, predict
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <command>: <what>`, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def add_common(parser: argparse.ArgumentParser, *, config: str | None = None,
               workdir: str | None = None, model: bool = False, json: bool = False,
               model_required: bool = True) -> None:
    """Adds the flags every subcommand spells the same way (`workdir` is its help)."""
    if config is not None:
        parser.add_argument("--config", default=config,
                            help=f"config file and preset, FILE[:ARG] (default {config}); "
                                 "override any field with --config.FIELD=VALUE")
    if workdir:
        parser.add_argument("--workdir", required=True, help=workdir)
    if model:
        parser.add_argument("--model", required=model_required,
                            help="hub name (e.g. bert-base-cased), local HF/TF directory, "
                                 "or a bert-jax workdir")
    if json:
        parser.add_argument("--json", action="store_true",
                            help="print JSON (one object per line) instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Splits `--config.a.b=value` (or `--config.a.b value`) overrides off `argv`: they
    are not argparse flags. Returns (the other arguments, the overrides as `--config.a.b=value`)."""
    rest, overrides = [], []
    it = iter(argv)
    for arg in it:
        if not arg.startswith("--config."):
            rest.append(arg)
        elif "=" in arg:
            overrides.append(arg)
        else:
            value = next(it, None)
            if value is None or value.startswith("--"):
                raise UserError(f"{arg} has no value: write {arg}=VALUE")
            overrides.append(f"{arg}={value}")
    return rest, overrides


def setup_logging() -> None:
    """One stderr handler on the root logger, at INFO for bert-jax, WARNING for libraries.

    A dependency's import (orbax's) runs `logging.basicConfig()`: a bare stderr handler
    at WARNING, after which a `basicConfig` of ours does nothing and bert-jax's INFO lines
    (`resumed from step N`) never show. Plain stderr handlers (theirs, or ours from an
    earlier call) are replaced; any other handler (a test's, an application's) is kept.
    """
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and (
                handler.stream in (sys.stderr, sys.__stderr__) or hasattr(handler, "bert_jax")):
            root.removeHandler(handler)
    handler = logging.StreamHandler()  # to the current sys.stderr
    handler.bert_jax = True
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # the libraries' INFO chatter stays out
    logging.getLogger("bert_jax").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        argv, overrides = split_overrides(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.config_overrides = overrides
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if overrides and not hasattr(args, "config"):
        parser.error(f"{args.command} takes no --config overrides")
    setup_logging()
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        message = user_message(e)
        if message is None or os.environ.get("BERT_JAX_TRACEBACK"):
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
