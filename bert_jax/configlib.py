"""The one config system: Python config files with `get_config(arg)`, CLI overrides.

A config spec is `FILE[:ARG]`, e.g. `configs/pretrain.py:base`; the file's
`get_config(ARG)` returns an `ml_collections.ConfigDict`. Overrides are
`--config.FIELD.SUB=VALUE` strings; VALUE is read as a Python literal when it is one
(`2e-5`, `True`, `(2, 2, 2)`) and as a string otherwise, and must fit the field's
type (ConfigDict checks it). Relative files are looked up in the working directory,
then in the bert-jax checkout, so `configs/...` works from anywhere in a dev install.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from bert_jax.config import BertConfig, preset
from bert_jax.errors import UserError
from bert_jax.paths import as_path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _resolve(path: str) -> Path:
    p = Path(path)
    if p.exists():
        return p
    if not p.is_absolute() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    raise UserError(f"config file not found: {path}")


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `FILE[:ARG]` and applies `--config.x=y` overrides."""
    path, _, arg = spec.partition(":")
    file = _resolve(path)
    module_spec = importlib.util.spec_from_file_location(f"_bert_jax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"{file} has no get_config() function")
    try:
        cfg = module.get_config(arg) if arg else module.get_config()
    except (KeyError, ValueError) as e:
        raise UserError(f"{file}: get_config({arg!r}) failed: {e}") from None
    apply_overrides(cfg, overrides)
    return cfg


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies `--config.a.b=value` (or `a.b=value`) strings to `cfg` in place."""
    for item in overrides:
        key, sep, text = item.removeprefix("--config.").partition("=")
        if not sep:
            raise UserError(f"override {item!r} has no '=': write --config.{key}=VALUE")
        *parents, leaf = key.split(".")
        node = cfg
        for i, name in enumerate(parents):
            if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
                raise UserError(f"unknown config field {'.'.join(parents[:i + 1])!r}")
            node = node[name]
        if leaf not in node:
            close = difflib.get_close_matches(leaf, list(node.keys()), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"unknown config field {key!r}{hint}")
        value = _parse_value(text)
        old = node[leaf]
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(old, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(old, str) and not isinstance(value, str):
            value = text
        try:
            node[leaf] = value
        except TypeError as e:
            raise UserError(f"--config.{key}: {e}") from None


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return cfg.to_json_best_effort(indent=2, sort_keys=True)


def save(cfg: ml_collections.ConfigDict, workdir: str | Path, name: str = "config.json") -> Path:
    """Writes the resolved config into the run's workdir (what `load_saved` reads back)."""
    path = as_path(workdir) / name  # a local directory or a URL (gs://...)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(cfg) + "\n")
    return path


def load_saved(workdir: str | Path, name: str = "config.json") -> ml_collections.ConfigDict:
    path = as_path(workdir) / name
    if not path.exists():
        raise UserError(f"{workdir} holds no {name}: is it a bert-jax workdir?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def model_section(preset_name: str, **overrides) -> ml_collections.ConfigDict:
    """A config's `model` field: every BertConfig field, starting from a preset."""
    return ml_collections.ConfigDict(dataclasses.asdict(preset(preset_name, **overrides)))


def model_config(section: ml_collections.ConfigDict) -> BertConfig:
    """The BertConfig a config's `model` section describes."""
    try:
        return BertConfig(**section.to_dict())
    except TypeError as e:
        raise UserError(f"bad model config: {e}") from None
    except ValueError as e:
        raise UserError(str(e)) from None
