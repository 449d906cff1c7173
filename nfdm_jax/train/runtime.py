"""Process-wide JAX settings for training runs, applied once at start-up."""
from __future__ import annotations

import logging
import os
from typing import Optional

import jax

# Compiles faster than this are not worth a disk round trip.
_MIN_COMPILE_SECS = 1.0


def default_cache_dir() -> str:
    """``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/nfdm_jax/xla`` (``~/.cache``)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nfdm_jax", "xla")


def enable_compilation_cache(directory: Optional[str] = None) -> str:
    """Turns on JAX's persistent compilation cache in ``directory`` (default
    :func:`default_cache_dir`) and returns it.

    A rerun, a resumed run or a second run of the same config then loads the compiled
    train/eval steps from disk instead of recompiling them (minutes on a CPU).
    """
    directory = directory or default_cache_dir()
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECS)
    return directory


def quiet_backend_probe(record: logging.LogRecord) -> bool:
    """Log filter: drops JAX's "Unable to initialize backend 'tpu'" INFO line. JAX tries
    every backend; on a machine without libtpu that line reads like an error but only
    means "not a TPU". Warnings and errors pass."""
    return not (record.levelno <= logging.INFO and record.getMessage().startswith(
        "Unable to initialize backend"))
