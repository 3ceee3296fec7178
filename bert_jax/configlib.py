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
from collections.abc import Iterator, Sequence
from pathlib import Path

import ml_collections

from bert_jax import runs
from bert_jax.config import BertConfig, preset
from bert_jax.errors import UserError
from bert_jax.paths import as_path, is_local

REPO_ROOT = Path(__file__).resolve().parent.parent


def _resolve(path: str) -> Path:
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    if not p.exists():
        raise UserError(f"--config: config file not found: {path}")
    if not p.is_file() or p.suffix != ".py":
        raise UserError(f"--config {path} is not a Python config file (FILE.py[:PRESET])")
    return p


def load(spec: str, overrides: Sequence[str] = (), *,
         like: str | None = None) -> ml_collections.ConfigDict:
    """Loads `FILE[:ARG]` and applies `--config.x=y` overrides.

    `like` is the command's default spec: a config lacking any of its top-level fields
    is a config for another command (e.g. configs/glue.py given to pretrain).
    """
    path, _, arg = spec.partition(":")
    file = _resolve(path)
    module_spec = importlib.util.spec_from_file_location(f"_bert_jax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: say where it broke, in one line
        raise UserError(f"--config {file} does not run: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise UserError(f"--config {file} has no get_config() function")
    try:
        cfg = module.get_config(arg) if arg else module.get_config()
    except Exception as e:
        raise UserError(f"--config {file}: get_config({arg!r}) failed: {e}") from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise UserError(f"--config {file}: get_config() returned a {type(cfg).__name__}, "
                        "not an ml_collections.ConfigDict")
    if like is not None:
        expected = load(like)
        missing = [k for k in expected if k not in cfg]
        if missing:
            raise UserError(f"--config {spec} is not a config for this command: it lacks "
                            f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''} "
                            f"(the default is {like})")
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
        if isinstance(old, ml_collections.ConfigDict):
            raise UserError(f"--config.{key} is a group of fields ({', '.join(old)}): set "
                            f"one, e.g. --config.{key}.{next(iter(old))}=VALUE")
        try:
            node[leaf] = value
        except TypeError:
            raise UserError(f"--config.{key}={text}: expected {_type_name(old)} (default "
                            f"{old!r}), got {_type_name(value)}") from None


def _type_name(value) -> str:
    return {bool: "True/False", int: "an integer", float: "a number", str: "a string",
            tuple: "a tuple", list: "a list", type(None): "None"}.get(
                type(value), type(value).__name__)


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return cfg.to_json_best_effort(indent=2, sort_keys=True)


# Config fields that hold paths. Saved relative to the workdir when inside it (the demo's
# data and vocab), else absolute, so a workdir moved or used from another directory
# still resolves them; anything that is not an existing path (a hub name) stays as is.
PATH_FIELDS = ("init_from", "data.vocab", "data.train", "data.eval", "data.train_phase2",
               "data.eval_phase2")


def _path_fields(d: dict) -> Iterator[tuple[dict, str]]:
    for dotted in PATH_FIELDS:
        *parents, leaf = dotted.split(".")
        node = d
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str) and node[leaf]:
            yield node, leaf


def relocatable(saved: dict, workdir: str | Path) -> dict:
    """`saved` (a config as a dict) with its paths portable: see PATH_FIELDS."""
    root = Path(workdir).resolve()
    for node, leaf in _path_fields(saved):
        p = Path(node[leaf]).expanduser()
        if p.exists():
            p = p.resolve()
            node[leaf] = str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
    return saved


def resolve_paths(saved: dict, workdir: str | Path) -> dict:
    """The inverse of `relocatable`: relative paths that exist under `workdir` become
    paths under it (wherever it now is)."""
    for node, leaf in _path_fields(saved):
        p = Path(node[leaf])
        if not p.is_absolute() and (Path(workdir) / p).exists():
            node[leaf] = str(Path(workdir) / p)
    return saved


def _as_written(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """The JSON object `save` writes for `cfg` into `workdir`: its paths relocated under a
    local workdir, left as they are for an object store."""
    plain = json.loads(to_json(cfg))
    return relocatable(plain, workdir) if is_local(workdir) else plain


def save(cfg: ml_collections.ConfigDict, workdir: str | Path, name: str = runs.CONFIG) -> Path:
    """Writes the resolved config into the run's workdir (what `load_saved` reads back)."""
    from bert_jax import files

    path = as_path(workdir) / name  # a local directory or a URL (gs://...)
    if not is_local(workdir):  # object stores: no rename, no local paths to relocate
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_json(cfg) + "\n")
        return path
    saved = _as_written(cfg, workdir)
    files.write_text_atomic(Path(path), json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return path


def read_saved(workdir: str | Path, name: str = runs.CONFIG) -> dict:
    """The saved config of a workdir as a dict, its paths resolved (see PATH_FIELDS)."""
    from bert_jax import files

    workdir = as_path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir} is a file, not a directory")
    path = workdir / name
    if not path.exists():
        raise UserError(f"{workdir} holds no {name}: is it a bert-jax workdir?")
    saved = files.read_json(path, "saved config")
    if not isinstance(saved, dict):
        raise UserError(f"{path} is not a bert-jax config (a JSON object)")
    return resolve_paths(saved, workdir)


def load_saved(workdir: str | Path, name: str = runs.CONFIG) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(read_saved(workdir, name))


def as_read_back(cfg: ml_collections.ConfigDict, workdir: str | Path) -> ml_collections.ConfigDict:
    """`cfg` as `load_saved(workdir)` would return it after `save(cfg, workdir)` (its paths
    through the same round trip): what to compare a saved config with."""
    return ml_collections.ConfigDict(resolve_paths(_as_written(cfg, workdir), workdir))


def model_section(preset_name: str, **overrides) -> ml_collections.ConfigDict:
    """A config's `model` field: every BertConfig field, starting from a preset."""
    return ml_collections.ConfigDict(dataclasses.asdict(preset(preset_name, **overrides)))


def model_config(section: ml_collections.ConfigDict | dict, *, source: str | None = None,
                 **overrides) -> BertConfig:
    """The BertConfig a config's `model` section describes (a live config's, or one read
    back from a run's config.json: `runs.RunDir.model_config`), with `overrides`.

    The one conversion of a config to a BertConfig. `source` names the file in the error."""
    fields = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else section
    try:
        return BertConfig(**{**fields, **overrides})
    except TypeError as e:
        where = f"{source}: " if source else ""
        raise UserError(f"{where}bad model config: {e}") from None
    except ValueError as e:
        raise UserError(f"{source}: bad model config: {e}" if source else str(e)) from None
