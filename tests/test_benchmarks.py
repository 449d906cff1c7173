"""The train-step benchmark's cheap path: XLA cost analysis of the lowered step, no compile."""
import importlib.util

import jax
import pytest

from benchmarks import train_step
from experiments import cifar10, toy2d
from nfdm_jax.nets import layers


def test_flop_count_and_ratio_table_without_compiling():
    config = toy2d.get_config("tiny")
    rows = [train_step.benchmark(c, "flops", None, 0.0, 1)
            for c in (config, train_step.as_vdm(config))]
    nfdm, vdm = rows
    assert (nfdm["model"], vdm["model"]) == ("nfdm", "vdm")
    assert nfdm["forward_sigma"] == "base" and "forward_sigma" not in vdm
    # NFDM adds the forward network (two jvps) to VDM's predictor: strictly more FLOPs.
    assert nfdm["gflop_per_step"] > vdm["gflop_per_step"] > 0
    assert "compile_s" not in nfdm  # 'flops' stops after lowering
    table = train_step.table(rows)
    ratio = nfdm["gflop_per_step"] / vdm["gflop_per_step"]
    assert "| nfdm/vdm |" in table and f"{ratio:.4g}" in table


def test_memory_measure_compiles_and_reports_bytes_accessed_and_buffers():
    config = toy2d.get_config("tiny")
    nfdm, vdm = (train_step.benchmark(c, "memory", None, 0.0, 1)
                 for c in (config, train_step.as_vdm(config)))
    # The forward network's jvp reads and writes more than VDM's step does.
    assert nfdm["gib_accessed_per_step"] > vdm["gib_accessed_per_step"] > 0
    assert nfdm["temp_gib"] > 0 and "steps_per_s" not in nfdm  # 'memory' stops before running
    assert "gib_accessed_per_step" in train_step.table([nfdm, vdm])


def test_step_on_given_devices_and_a_clear_error_without_libtpu():
    devices = jax.devices()[:1]
    row = train_step.benchmark(toy2d.get_config("tiny"), "flops", None, 0.0, 1, devices)
    assert row["device"] == f"1x {devices[0].device_kind}"
    if importlib.util.find_spec("libtpu") is None:
        with pytest.raises(RuntimeError, match="libtpu"):
            train_step.aot_devices("v5p:1x1x1")


def test_conv_auto_resolves_for_the_platform_compiled_for():
    """A TPU step compiled on a CPU host keeps XLA's convolutions: left at "auto", the layers
    would read the host's backend while tracing and build im2col matmuls, whose k²-fold
    patch buffers multiplied the compiled temporaries."""
    config = cifar10.get_config("tiny")
    assert config.net.conv == "auto"
    assert train_step.for_platform(config, "tpu").net.conv == "xla"
    assert train_step.for_platform(config, "cpu").net.conv == "matmul"
    assert config.net.conv == "auto"  # a copy, not the caller's config
    config.net.conv = "matmul"
    assert train_step.for_platform(config, "tpu").net.conv == "matmul"  # explicit: kept
    with pytest.raises(ValueError, match="choose from"):
        layers.resolve_conv("fft", "tpu")
