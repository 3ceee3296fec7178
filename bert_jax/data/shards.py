"""The on-disk dataset: plain `.npy` arrays, one directory per shard, written atomically.

    DIR/metadata.json            knobs, vocab fingerprint, shard list, counts; "complete"
    DIR/is_continuation.npy      uint8[vocab_size]: 1 for `##` pieces (whole-word masking)
    DIR/shard-00000/index.json   instance count; every file's shape, dtype, size, sha256
    DIR/shard-00000/input_ids.npy             [N, L] uint16 (int32 if the vocab needs it)
                   lengths.npy               [N] uint16, real tokens incl. [CLS]/[SEP]
                   a_lengths.npy             [N] uint16, tokens of `[CLS] A [SEP]`
                   next_sentence_labels.npy  [N] uint8, 1 = B is a random next
                   masked_lm_positions.npy   [N, P] uint16 (static masking only; 0 = pad)
                   masked_lm_ids.npy         [N, P] (static masking only)

Why numpy arrays: `np.load(mmap_mode="r")` gives random access to any instance with no
dependency and no decoding step; the files open in any numpy, and fixed-width rows
make a shard's size a function of its instance count, so a truncated file is caught by
comparing sizes with the index. A shard is written in a hidden temporary directory,
fsync-ed, then renamed into place: a shard directory that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from bert_jax import files
from bert_jax.errors import UserError

FORMAT = "bert-jax-pretraining/1"
METADATA = "metadata.json"
INDEX = "index.json"
TMP_PREFIX = files.TMP_PREFIX  # shard directories and JSON files alike


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """The dataset's JSON files (compact indent), written whole or not at all."""
    files.write_json_atomic(path, obj, indent=1)


def write_shard(root: Path, index: int, arrays: dict[str, np.ndarray],
                extra: dict[str, Any]) -> Path:
    """Writes one shard atomically; returns its directory."""
    final = root / shard_name(index)
    tmp = root / f"{TMP_PREFIX}{shard_name(index)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {}
    for name, array in sorted(arrays.items()):
        path = tmp / f"{name}.npy"
        with open(path, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        files[name] = {"shape": list(array.shape), "dtype": array.dtype.str,
                       "bytes": path.stat().st_size, "sha256": _sha256(path)}
    n = len(next(iter(arrays.values()))) if arrays else 0
    write_json_atomic(tmp / INDEX, {"num_instances": n, "files": files, **extra})
    _fsync_dir(tmp)
    os.rename(tmp, final)  # atomic: the shard appears complete or not at all
    _fsync_dir(root)
    return final


def read_index(shard: Path) -> dict[str, Any]:
    try:
        return json.loads((shard / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"shard {shard} has no readable {INDEX} ({e}); delete the shard "
                        "and re-run create-data to rewrite it") from None


_FIX = "delete the shard directory and re-run create-data to rewrite it"


def check_shard(shard: Path, *, verify: bool = False) -> dict[str, Any]:
    """The shard's index after checking every file's size against it (and its sha256
    with `verify`); any mismatch is a UserError naming the shard."""
    index = read_index(shard)
    for name, info in index["files"].items():
        path = shard / f"{name}.npy"
        if not path.exists():
            raise UserError(f"shard {shard} is missing {path.name}; {_FIX}")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise UserError(f"shard {shard}: {path.name} has {size} bytes, the index says "
                            f"{info['bytes']} (truncated or corrupt); {_FIX}")
        if verify and _sha256(path) != info["sha256"]:
            raise UserError(f"shard {shard}: {path.name} fails its sha256 check (corrupt); "
                            f"{_FIX}")
    return index


def open_shard(shard: Path, index: dict[str, Any]) -> dict[str, np.ndarray]:
    """{name: read-only memmap} of a checked shard; a bad .npy header is a UserError."""
    n = int(index["num_instances"])
    arrays = {}
    for name, info in index["files"].items():
        path = shard / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise UserError(f"shard {shard}: cannot read {path.name} ({e}); {_FIX}") from None
        if list(array.shape) != info["shape"] or array.dtype.str != info["dtype"] or (
                array.shape[:1] != (n,)):
            raise UserError(f"shard {shard}: {path.name} has shape {array.shape} "
                            f"{array.dtype}, the index says {info['shape']} {info['dtype']} "
                            f"(corrupt); {_FIX}")
        arrays[name] = array
    return arrays


def read_metadata(root: str | Path) -> dict[str, Any]:
    path = Path(root) / METADATA
    if not path.exists():
        raise UserError(f"{root} is not a pre-training dataset (no {METADATA}); make one "
                        "with `bert-jax create-data`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def clean_temporaries(root: Path) -> int:
    """Removes the temporary files of an interrupted run; returns how many."""
    removed = 0
    for path in root.glob(TMP_PREFIX + "*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        removed += 1
    return removed
