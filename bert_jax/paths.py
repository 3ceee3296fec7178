"""Run paths that may be local or on cloud storage, as `etils.epath.Path` (what orbax uses).

pathlib collapses `gs://bucket/run` into `gs:/bucket/run`, a local directory; an
`epath.Path` keeps the scheme and reads and writes through the matching file system
(gcsfs / tf.io.gfile for gs://, s3://), and is a plain local path otherwise. Workdirs,
checkpoint directories, metrics and saved configs go through `as_path`.
"""

from __future__ import annotations

import os

from etils import epath


def is_local(path: str | os.PathLike) -> bool:
    return "://" not in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: a URL stays as it is, a local path is made absolute."""
    if is_local(path):
        return epath.Path(os.path.abspath(os.fspath(path)))
    return epath.Path(os.fspath(path))
