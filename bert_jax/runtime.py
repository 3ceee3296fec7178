"""Process-wide JAX settings from a config's `runtime` section, applied before JAX starts.

    runtime.configure(config.runtime)   # first thing in a run, before any jax.devices()
    runtime.enable_compilation_cache()  # commands without a runtime section (glue, embed...)

- XLA and libtpu flags (`xla_flags`, `libtpu_flags`): appended to the XLA_FLAGS and
  LIBTPU_INIT_ARGS environment variables, which the backend reads once, when it starts;
  set too late they would be ignored silently, so that is an error instead.
- The persistent compilation cache (`compilation_cache`, on by default): every compiled
  program is stored under `cache_dir` (default $BERT_JAX_CACHE, else
  ~/.cache/bert-jax/xla), keyed by the program, the devices and the jax/XLA versions, so a
  restarted or resumed run loads its programs instead of compiling them again (tens of
  seconds per mesh on a CPU, minutes on a pod). It may be any path jax's file layer
  reads, gs:// included; `--config.runtime.compilation_cache=False` turns it off.
  `bert-jax glue`, `predict`, `fill-mask`, `embed`, `nsp` and `attention` turn it on too
  (`enable_compilation_cache`), so a sweep run again, or a rerun of an inference command,
  compiles nothing; JAX_ENABLE_COMPILATION_CACHE=false (jax's own switch) turns it off
  for every command.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax
import ml_collections

from bert_jax.errors import UserError

log = logging.getLogger(__name__)


def default_cache_dir() -> str:
    return os.environ.get("BERT_JAX_CACHE") or str(Path.home() / ".cache" / "bert-jax" / "xla")


def _backend_started() -> bool:
    from jax._src import xla_bridge  # no public way to ask without starting it

    return xla_bridge.backends_are_initialized()


def _append_env(name: str, flags: str) -> None:
    flags = flags.strip()
    if flags and flags not in os.environ.get(name, ""):
        os.environ[name] = f"{os.environ.get(name, '')} {flags}".strip()


def configure(runtime: ml_collections.ConfigDict) -> None:
    """Applies `runtime` (xla_flags, libtpu_flags, compilation_cache, cache_dir)."""
    flags = {"XLA_FLAGS": runtime.get("xla_flags", ""),
             "LIBTPU_INIT_ARGS": runtime.get("libtpu_flags", "")}
    if any(v.strip() for v in flags.values()):
        if _backend_started():
            raise UserError("--config.runtime.xla_flags/libtpu_flags must be applied before "
                            "JAX starts its backend, and it has already started in this "
                            "process; set XLA_FLAGS / LIBTPU_INIT_ARGS in the environment")
        for name, value in flags.items():
            _append_env(name, value)
    if runtime.get("compilation_cache", True):
        directory = enable_compilation_cache(runtime.get("cache_dir", ""))
        log.info("compilation cache: %s", directory or "off (JAX_ENABLE_COMPILATION_CACHE)")


def enable_compilation_cache(cache_dir: str = "") -> str | None:
    """Stores every program this process compiles under `cache_dir` (default
    `default_cache_dir()`) and loads it from there next time; returns the directory, or
    None where JAX_ENABLE_COMPILATION_CACHE=false turned the cache off.

    Call it before the first compilation you want cached (programs compiled earlier in
    the process are not written). Process-wide, like every setting here: a library
    function never calls it, a command or a script does.
    """
    if not jax.config.jax_enable_compilation_cache:
        return None
    directory = cache_dir or default_cache_dir()
    jax.config.update("jax_compilation_cache_dir", directory)
    # Cache every program, however quick to compile: a restart then compiles nothing.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory
