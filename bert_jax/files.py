"""Files written whole or not at all: every file bert-jax writes goes through here.

The content goes to a temporary file beside the target, is flushed to disk, and is then
renamed over the target, so a process killed at any moment leaves either the old file or
the new one, never a half-written file under the final name. Every file gets the mode a
plain `open(path, "w")` would give (0644 under the usual umask), whichever library wrote
the bytes (safetensors and `tempfile` create files 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bert_jax.errors import UserError
from bert_jax.paths import as_path, is_local

TMP_PREFIX = ".tmp-"  # what an interrupted write leaves behind (safe to delete)


def _file_mode() -> int:
    """0666 less the process umask (reading the umask means setting it: set it back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def check_writable_dir(path: str | Path, what: str = "output directory", *,
                       create: bool = True) -> Path:
    """`path` as a directory to write into, made if missing (unless `create` is False);
    a file there is a UserError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} exists and is not a directory")
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {what} {path}: {e.strerror}") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` for any writer (np.save, safetensors,
    savefig...); when the block ends without error, the file is fsynced, given the
    usual mode and renamed to `path`. On error the temporary file is removed."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    check_writable_dir(path.parent)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_json_atomic(path: str | Path, obj: Any, indent: int = 2) -> None:
    """JSON with sorted keys (equal content, equal bytes) and a final newline."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file's content; a missing, unreadable or non-UTF-8 file is a
    UserError naming it (and the byte offset of the first bad byte). A URL (gs://...)
    is read through its file system (paths.as_path)."""
    path = Path(path) if is_local(path) else as_path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}: "
                        f"{e.object[e.start:e.start + 1]!r})") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None


def read_json(path: str | Path, what: str = "file") -> Any:
    """A JSON file's content; missing, non-UTF-8 or malformed is a UserError naming it."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON (line {e.lineno}: {e.msg})") from None
