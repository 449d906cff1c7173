"""Test session setup: 8 fake CPU devices, strict rank promotion, compilation cache.

XLA_FLAGS must be set before JAX initialises its backend, hence at import time here.
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="module")
def x64():
    """Float64 for the whole module (the maths tests compare against closed forms)."""
    with jax.enable_x64(True):
        yield
