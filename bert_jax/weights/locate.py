"""Finding a model and loading it: `load_pretrained(name_or_path, head)`.

A `--model` value is a bert-jax run directory (its latest checkpoint), a hub name (the
local HF cache, downloaded when online), an HF directory or weights file, or a TF
checkpoint directory or prefix. Whatever the source, its weights become an HF state dict
and then a Flax param tree through `names.hf_to_flax`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from bert_jax import heads
from bert_jax.config import BertConfig
from bert_jax.errors import UserError
from bert_jax.runs import RunDir
from bert_jax.tokenizer import Tokenizer
from bert_jax.weights.hf import (
    CONFIG_FILES,
    TOKENIZER_FILES,
    read_config,
    read_safetensors,
    read_sharded,
    read_torch_bin,
)
from bert_jax.weights.names import LoadReport, detect_head, flax_to_hf, hf_to_flax
from bert_jax.weights.tf_checkpoint import read_tf_checkpoint


def _tf_prefix(path: Path) -> Path | None:
    """The checkpoint prefix `.../bert_model.ckpt` a path names, if it names a TF checkpoint."""
    if Path(f"{path}.index").exists():
        return path
    if path.name.endswith(".index") and path.is_file():
        return path.with_suffix("")
    if path.is_dir():
        found = sorted(path.glob("*.index"))
        if len(found) == 1:
            return found[0].with_suffix("")
        if len(found) > 1:
            raise UserError(f"{path} holds several TF checkpoints ({found[0].name}, ...): pass "
                            "the one you want as DIR/NAME.ckpt")
    return None


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(constants.HF_HUB_OFFLINE)


def _from_hub(name: str) -> Path:
    """A hub model's files (config, tokenizer, weights) in the local HF cache."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = _offline()
    hint = (f"to use a local copy, pass its directory (config.json + model.safetensors or "
            f"pytorch_model.bin, or a TF bert_model.ckpt) instead of {name!r}")
    try:
        d = Path(snapshot_download(name, local_files_only=offline, allow_patterns=[
            *CONFIG_FILES, *TOKENIZER_FILES, "model.safetensors", "model.safetensors.index.json",
            "model-*-of-*.safetensors"]))
        if not any(d.glob("*.safetensors")):  # older repos have only pytorch_model.bin
            hf_hub_download(name, "pytorch_model.bin", local_files_only=offline)
    except RepositoryNotFoundError:
        raise UserError(f"{name!r} is neither a local path nor a model on the HF hub") from None
    except (LocalEntryNotFoundError, EntryNotFoundError, HfHubHTTPError, OSError) as e:
        why = "HF_HUB_OFFLINE is set" if offline else "no network"
        raise UserError(f"{name!r} is not in the local HF cache and cannot be downloaded "
                        f"({why}: {type(e).__name__}); {hint}") from None
    return d


@dataclasses.dataclass
class Source:
    """A checkpoint located on disk: its directory (config, vocab) and weight files."""

    directory: Path
    format: str  # safetensors | pytorch | tf-checkpoint
    weights: Path  # a file, a shard index, or a TF prefix


def locate(name_or_path: str | Path) -> Source:
    """Finds the weights a `--model` value names: a path, a TF prefix, or a hub name."""
    path = Path(name_or_path).expanduser()
    if not path.exists() and not Path(f"{path}.index").exists():
        name = str(name_or_path)
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) and not name.startswith("."):
            path = _from_hub(name)
        else:
            raise UserError(f"no such file or directory: {name_or_path}")
    # A bert-jax pre-training workdir is handled by `load_pretrained` before this.
    if path.is_file():
        if path.suffix == ".safetensors":
            return Source(path.parent, "safetensors", path)
        if path.suffix in (".bin", ".pt", ".pth"):
            return Source(path.parent, "pytorch", path)
    for weights, fmt in (("model.safetensors", "safetensors"),
                         ("model.safetensors.index.json", "safetensors"),
                         ("pytorch_model.bin", "pytorch"),
                         ("pytorch_model.bin.index.json", "pytorch")):
        if path.is_dir() and (path / weights).exists():
            return Source(path, fmt, path / weights)
    prefix = _tf_prefix(path)
    if prefix is not None:
        return Source(prefix.parent, "tf-checkpoint", prefix)
    if path.is_file():
        raise UserError(f"{path} is not a weights file: expected a .safetensors, .bin/.pt/.pth "
                        "or TF checkpoint file, or a directory holding one")
    raise UserError(f"{path} holds no weights: expected model.safetensors, pytorch_model.bin "
                    "or a TF checkpoint (bert_model.ckpt.index + .data-*)")


def read_weights(source: Source) -> tuple[dict[str, np.ndarray], list[str]]:
    """The HF state dict of a located checkpoint, plus notes on what was skipped."""
    w = source.weights
    if source.format == "tf-checkpoint":
        sd, skipped = read_tf_checkpoint(w)
        return sd, [f"skipped {skipped} optimizer entries (adam_m, adam_v, global_step)"]
    reader = read_safetensors if source.format == "safetensors" else read_torch_bin
    if w.name.endswith(".index.json"):
        return read_sharded(w, reader), []
    return reader(w), []


# ---- bert-jax pre-training workdirs -----------------------------------------------------

def workdir_config(path: str | Path) -> dict[str, Any] | None:
    """The saved config.json of a bert-jax run directory (orbax checkpoints plus a config
    with a "model" section: a pre-training workdir, or a fine-tuning run with "task"
    too), or None for any other path."""
    p = Path(path).expanduser()
    run = RunDir(p)
    if not run.config.is_file():
        return None
    if not run.has_checkpoints():
        try:
            saved = json.loads(run.config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # not ours: the HF loader says what is wrong with it
        if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
            if "task" in saved:
                raise UserError(f"{p} is a fine-tuning run that did not keep its weights: "
                                "run `bert-jax glue` with --config.save_checkpoint=True (or "
                                "--export)")
            raise UserError(f"{p} is a bert-jax workdir with no checkpoints yet: a run saves "
                            "every --config.train.checkpoint_every steps and at its end")
        return None
    saved = run.saved_config()  # unreadable: a broken workdir, said in one line
    return saved if "model" in saved else None


def is_workdir(path: str | Path) -> bool:
    """A `bert-jax pretrain` workdir (or any run directory with model checkpoints)."""
    return workdir_config(path) is not None


def read_workdir(path: Path, **overrides: Any
                 ) -> tuple[dict[str, np.ndarray], BertConfig, str | None, int]:
    """The latest checkpoint of a pre-training workdir as an HF state dict, its model
    config, the vocab its data was made with, and the checkpoint's step."""
    from bert_jax import checkpoint

    run = RunDir(path)
    saved = run.saved_config()
    config = run.model_config(saved, **overrides)
    params, step = checkpoint.restore_params(run.checkpoints)
    vocab = saved.get("data", {}).get("vocab") or None
    return flax_to_hf(params, vocab_size=config.vocab_size), config, vocab, int(step)


# ---- the entry points -------------------------------------------------------------------

VOCAB_ROW_MULTIPLE = 128  # embeddings are padded to a multiple of this (8..128) at most


def check_vocab_rows(tokens: int, rows: int, vocab_file: str | Path) -> str | None:
    """Checks that a vocab of `tokens` fits word embeddings of `rows` rows.

    Rows past the vocab up to the next multiple of 128 are padding for accelerators (the
    TF toy checkpoint: 14 tokens, 15 rows); inference never predicts them. More rows than
    that, or more tokens than rows, means the wrong vocab: a UserError. Returns a note
    for padding, else None.
    """
    padded = -(-tokens // VOCAB_ROW_MULTIPLE) * VOCAB_ROW_MULTIPLE
    if tokens > rows:
        raise UserError(f"{vocab_file} has {tokens} tokens but the word embeddings have "
                        f"{rows} rows: wrong vocab for these weights")
    if rows > padded:
        raise UserError(f"{vocab_file} has {tokens} tokens but the word embeddings have "
                        f"{rows} rows (padding goes to {padded} at most): wrong vocab for "
                        "these weights")
    if rows > tokens:
        return (f"the vocab has {tokens} tokens, the embeddings {rows} rows (the "
                f"{rows - tokens} padding rows are never predicted)")
    return None


def _vocab_file(directory: Path) -> Path:
    return directory / ("tokenizer.json" if (directory / "tokenizer.json").exists()
                        else "vocab.txt")


@dataclasses.dataclass
class Pretrained:
    """A loaded model: everything inference, fine-tuning and pre-training init need."""

    config: BertConfig
    params: dict[str, Any]  # matches model.build(config, head)
    tokenizer: Tokenizer | None
    report: LoadReport
    head: str

    @property
    def model(self):
        from bert_jax import model as modeling

        return modeling.build(self.config, self.head)


def load_pretrained(name_or_path: str | Path, head: str = "pretraining", *, rng: Any = None,
                    **config_overrides: Any) -> Pretrained:
    """Loads released (or exported) weights for `model.build(config, head)`.

    `head="auto"` takes the head the checkpoint was saved with. `config_overrides`
    replace config fields, e.g. `dtype="bfloat16"`, `num_labels=3`. Tensors the head
    lacks are initialised from `rng` and listed in `report.initialized`.
    """
    if head != "auto":
        heads.head(head)  # a UserError for an unknown head
    if is_workdir(name_or_path):
        sd, config, vocab, step = read_workdir(Path(name_or_path), **config_overrides)
        fmt, notes, directory = "bert-jax checkpoint", [], Path(name_or_path)
    else:
        source = locate(name_or_path)
        config = read_config(source.directory, **config_overrides)
        sd, notes = read_weights(source)
        fmt, vocab, directory, step = source.format, None, source.directory, None
    if head == "auto":
        head = detect_head(list(sd))
    params, report = hf_to_flax(sd, config, head, rng=rng, source=str(name_or_path),
                                format=fmt)
    report.notes[:0] = notes
    report.step = step
    tokenizer = None
    if vocab is not None or any((directory / f).exists()
                                for f in ("tokenizer.json", "vocab.txt")):
        tokenizer = Tokenizer.from_vocab(vocab) if vocab else Tokenizer.from_dir(directory)
        note = check_vocab_rows(tokenizer.vocab_size, config.vocab_size,
                                vocab or _vocab_file(directory))
        if note:
            report.notes.append(note)
    else:
        report.notes.append(f"no vocab.txt or tokenizer.json in {directory}")
    return Pretrained(config, params, tokenizer, report, head)
