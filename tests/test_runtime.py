"""Process settings from the config: XLA flags reach the backend, the compilation cache
serves a second process without compiling, the profiler window's syntax."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import ml_collections
import pytest
from conftest import REPO

from bert_jax import runtime
from bert_jax.errors import UserError
from bert_jax.train.profile import parse_window

# One jit compiled in a fresh process with the cache in argv[1]; prints the cache's counts.
CHILD = """
import json, sys
import jax, ml_collections
from jax import monitoring
from bert_jax import runtime
counts = {}
monitoring.register_event_listener(lambda event, **kw: counts.__setitem__(
    event, counts.get(event, 0) + 1))
runtime.configure(ml_collections.ConfigDict(dict(
    compilation_cache=True, cache_dir=sys.argv[1], xla_flags=sys.argv[2], libtpu_flags="")))
y = jax.jit(lambda x: (x @ x.T).sum())(jax.numpy.ones((8, 8)))
print(json.dumps({"devices": jax.device_count(), "value": float(y),
                  "hits": counts.get("/jax/compilation_cache/cache_hits", 0),
                  "misses": counts.get("/jax/compilation_cache/cache_misses", 0)}))
"""


def child(cache_dir, xla_flags=""):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", CHILD, str(cache_dir), xla_flags], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_second_process_compiles_nothing_and_flags_reach_the_backend(tmp_path):
    first = child(tmp_path / "cache", "--xla_force_host_platform_device_count=3")
    second = child(tmp_path / "cache", "--xla_force_host_platform_device_count=3")
    assert first["devices"] == second["devices"] == 3  # the flag was applied in time
    assert first["misses"] >= 1 and first["hits"] == 0
    assert second["misses"] == 0 and second["hits"] == first["misses"]
    assert second["value"] == first["value"] == 512.0
    assert any((tmp_path / "cache").iterdir())


def test_flags_after_the_backend_started_are_an_error():
    jax.devices()  # the backend is up in this process
    config = ml_collections.ConfigDict(dict(compilation_cache=False, cache_dir="",
                                            xla_flags="--xla_dump_to=/tmp/x", libtpu_flags=""))
    with pytest.raises(UserError, match="before JAX starts"):
        runtime.configure(config)


def test_profile_window_syntax():
    assert parse_window("") is None
    assert parse_window("10,5") == (10, 5)
    for bad in ("10", "a,b", "-1,5", "3,0"):
        with pytest.raises(UserError, match="profile"):
            parse_window(bad)
