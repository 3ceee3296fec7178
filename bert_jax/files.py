"""Files written whole or not at all: results, summaries and metadata that mark work done.

The content goes to a temporary file beside the target, is flushed to disk, and is then
renamed over the target, so a process killed at any moment leaves either the old file or
the new one, never a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"  # what an interrupted write leaves behind (safe to delete)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(TMP_PREFIX + path.name)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, obj: Any, indent: int = 2) -> None:
    """JSON with sorted keys (equal content, equal bytes) and a final newline."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")
