"""Process-wide settings of training runs (nfdm_jax.train.runtime)."""
import logging
import os

import jax

from nfdm_jax.train import runtime


def test_compilation_cache_goes_to_the_env_dir_or_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert runtime.default_cache_dir() == str(tmp_path / "env")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.default_cache_dir() == os.path.join(str(tmp_path / "xdg"), "nfdm_jax", "xla")
    before = (jax.config.jax_compilation_cache_dir,
              jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        assert runtime.enable_compilation_cache(str(tmp_path / "c")) == str(tmp_path / "c")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])


def test_backend_probe_filter_drops_only_the_probe_info_line():
    def record(level, msg):
        return logging.LogRecord("jax._src.xla_bridge", level, __file__, 1, msg, None, None)

    probe = "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so"
    assert not runtime.quiet_backend_probe(record(logging.INFO, probe))
    assert runtime.quiet_backend_probe(record(logging.WARNING, probe))
    assert runtime.quiet_backend_probe(record(logging.INFO, "process 0/1, 1 local devices"))
