"""Train-step benchmark: what one step of a config costs, for NFDM and VDM side by side.

Run from the repository root (the configs are files under ``experiments/``)::

    python -m benchmarks.train_step --config=experiments/digits.py
    python -m benchmarks.train_step --config=experiments/cifar10.py --config.train.batch_size=128 \\
        --measure=memory                       # FLOPs + compiled memory, nothing allocated

Per model (the config's, then ``:vdm`` on the same predictor U-Net unless ``--nocompare_vdm``)
it prints one JSON line and, at the end, a table with:

* ``compile_s``: lowering + XLA compilation of the real jitted train step (the persistent
  compilation cache is off here, so this is a cold compile); ``compile_cpu_s`` its CPU time;
* ``gflop_per_step``: XLA's cost analysis of the lowered step (exact, load-independent);
* ``steps_per_s``, ``examples_per_s``: 1 / median dispatch time over ``--min_time`` seconds
  (at least ``--min_steps`` dispatches, after a warm-up), per optimiser step; on CPU also
  ``cpu_s_per_step`` (process CPU time, all threads) and ``load_avg``, since wall times on
  a shared machine measure the other jobs too;
* ``achieved_tflops``, ``mfu``: FLOPs per step × steps/s, against ``--peak_tflops`` if given,
  else a matmul peak measured in this process (``peak_source`` says which);
* ``gib_accessed_per_step``: XLA's count of bytes the compiled step reads and writes, which
  bounds a bandwidth-limited backend's time (CPUs) as FLOPs bound a compute-limited one;
* ``temp_gib``, ``args_gib``, ``out_gib``: the compiled step's own buffers from
  ``memory_analysis()`` (temporaries, arguments, outputs), not the process's RSS;
* ``forward_sigma``, ``forward_remat``: for models with a forward network, whether it learns
  σ and what its U-Net rematerialises (both change its cost);
* ``nfdm/vdm`` ratios of time, FLOPs and temporaries.

``--measure`` stops early: ``flops`` (lowering only: abstract shapes, no compile, no
parameters allocated), ``memory`` (+ compile and memory_analysis, still nothing allocated),
``time`` (everything). ``--json=PATH`` appends the JSON lines to a file.

``--aot_topology=v5p:1x1x1`` compiles for that TPU slice on a machine without one (XLA's TPU
compiler from the ``libtpu`` wheel, ``pip install 'jax[tpu]'``; ``--measure=memory``): the
accelerator's own memory analysis, which XLA:CPU's does not predict (it ignores
``jax.checkpoint``'s barriers and schedules for concurrency, not memory).

Batches are random data of the config's shape (no dataset needed); everything else is the
real training path: mesh, shardings, donated state and ``steps_per_dispatch``.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from nfdm_jax.data.registry import example_shape
from nfdm_jax.models import Model
from nfdm_jax.nets import layers
from nfdm_jax.train import runtime, sharding, step as steps, validation


GIB = 2 ** 30


def as_vdm(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same config as a VDM: fixed linear γ, VP-matching g, ε-parameterised U-Net."""
    c = config.copy_and_resolve_references()
    c.model.name, c.model.volatility, c.model.parameterization = "vdm", "vp_matching", "eps"
    return c


def for_platform(config: ml_collections.ConfigDict, platform: str) -> ml_collections.ConfigDict:
    """``config`` with ``net.conv`` resolved for the devices that will run it. Layers resolve
    "auto" from the default backend while tracing, which on a CPU host compiling for a TPU
    slice is the CPU's: im2col matmuls whose k²-fold patch buffers the TPU never holds."""
    conv = layers.resolve_conv(config.net.conv, platform)
    if conv == config.net.conv:
        return config
    c = config.copy_and_resolve_references()
    c.net.conv = conv
    return c


def aot_devices(topology: str) -> list[Any]:
    """The compile-only devices of a TPU slice such as ``"v5p:1x1x1"`` or ``"v5e:2x2"``
    (``jax.experimental.topologies``): XLA's TPU compiler, with no TPU attached, gives the
    compiled step's real cost and memory analysis. Needs the ``libtpu`` wheel that
    ``jax[tpu]`` pins for this JAX version."""
    from jax.experimental import topologies

    # libtpu's lock file keeps two processes off one TPU; a compile-only client opens none,
    # and the lock would stop a second compile (or a test) while a sweep runs.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    bounds = [int(v) for v in topology.split(":")[-1].split("x")]
    # A slice smaller than one host (one chip) needs its own host bounds.
    kwargs: dict[str, Any] = ({"chips_per_host_bounds": tuple(bounds)} if np.prod(bounds) == 1
                              else {})
    if topology.startswith("v4"):
        # JAX drives a v4 chip's two TensorCores as one device (megacore), as v5p's; the
        # compile-only topology would otherwise show one device per TensorCore.
        kwargs["chip_config_name"] = "megacore"
    try:
        return list(topologies.get_topology_desc(topology, "tpu", **kwargs).devices)
    except Exception as e:  # the plugin's own errors are opaque: say what is needed
        raise RuntimeError(
            f"could not describe the TPU topology {topology!r} ({e}); AOT compiling for a TPU "
            "needs the libtpu wheel of this JAX version: pip install 'jax[tpu]==<jax version>'"
        ) from e


class Step:
    """The jitted train step of a config, and abstract (shape-only) state and batch, on a
    mesh over ``devices`` (default: all of this process's backend)."""

    def __init__(self, config: ml_collections.ConfigDict, devices: Optional[list[Any]] = None):
        config = for_platform(config, (devices or jax.devices())[0].platform)
        t = config.train
        self.config = config
        self.shape = example_shape(config.data)
        validation.check_config(config, devices)
        validation.check_model_shape(config, self.shape)
        self.mesh = sharding.make_mesh(config, devices)
        self.model = Model(config, self.shape)
        training = steps.training(config, self.model)
        fields = ["x", "x1"] if self.model.bridge else ["x"]
        images = len(self.shape) == 3
        dtype = np.uint8 if images else np.float32
        example = {f: np.zeros((1,) + self.shape, dtype) for f in fields}
        self.init = lambda key: training.init(key, example)  # noqa: E731
        abstract = jax.eval_shape(self.init, jax.random.PRNGKey(0))
        self.state_shardings = sharding.state_shardings(config, self.mesh, abstract)
        self.batch_sharding = sharding.batch_sharding(self.mesh, True)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
            self.state_shardings)
        stacked = (t.steps_per_dispatch, t.batch_size) + self.shape
        self.abstract_batch = {f: jax.ShapeDtypeStruct(stacked, dtype, sharding=self.batch_sharding)
                               for f in fields}
        self.fn = steps.jit_train_step(training.step(jax.random.PRNGKey(1)), self.mesh,
                                       self.state_shardings)

    def random_batch(self) -> dict[str, jax.Array]:
        rng = np.random.default_rng(0)
        out = {}
        for f, a in self.abstract_batch.items():
            host = (rng.integers(0, 256, a.shape, dtype=np.uint8) if a.dtype == np.uint8
                    else rng.standard_normal(a.shape).astype(np.float32))
            out[f] = jax.device_put(host, self.batch_sharding)
        return out

    def state(self) -> Any:
        return jax.jit(self.init, out_shardings=self.state_shardings)(
            jax.random.PRNGKey(self.config.seed))


def _cost(obj) -> dict[str, float]:
    cost = obj.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return dict(cost or {})


def median_step_time(run: Callable[[], Any], min_time: float,
                     min_steps: int) -> tuple[float, float]:
    """Median wall time of ``run()`` (blocked on its result) over >= min_time s and
    >= min_steps calls, and this process's mean CPU time (all threads) per call."""
    jax.block_until_ready(run())  # warm-up
    times: list[float] = []
    start, cpu = time.perf_counter(), time.process_time()
    while len(times) < min_steps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (time.process_time() - cpu) / len(times)


def matmul_peak_tflops(dtype: Any, n: Optional[int] = None) -> float:
    """Achieved TFLOP/s of a square matmul in ``dtype`` on the default device: a practical
    peak for MFU where the device's nominal one is unknown (CPUs)."""
    n = n or (1024 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n ** 3 / median_step_time(lambda: f(a, b), 2.0, 5)[0] / 1e12


def benchmark(config: ml_collections.ConfigDict, measure: str, peak_tflops: Optional[float],
              min_time: float, min_steps: int,
              devices: Optional[list[Any]] = None) -> dict[str, Any]:
    """One model's row (see the module docstring); ``devices``: see :class:`Step`."""
    spd = config.train.steps_per_dispatch
    s = Step(config, devices)
    mesh_devices = s.mesh.devices.ravel()
    out: dict[str, Any] = {"model": config.model.name, "batch": config.train.batch_size,
                           "dtype": config.net.dtype, "steps_per_dispatch": spd,
                           "device": f"{mesh_devices.size}x {mesh_devices[0].device_kind}"}
    if s.model.spec.forward_net:
        out["forward_sigma"] = s.model.forward_sigma
        if len(s.shape) == 3:  # the U-Net's; the 2-D MLPs have no remat
            out["forward_remat"] = config.net.forward_remat
    start, cpu = time.perf_counter(), time.process_time()
    lowered = s.fn.lower(s.abstract_state, s.abstract_batch)
    lower_s = time.perf_counter() - start
    # A lax.scan over steps is one while loop, whose body cost analysis counts once.
    out["gflop_per_step"] = _cost(lowered).get("flops", float("nan")) / 1e9
    out["params"] = int(sum(np.prod(a.shape) for a in jax.tree.leaves(s.abstract_state.params)))
    if measure == "flops":
        return out
    start = time.perf_counter()
    compiled = lowered.compile()
    out["compile_s"] = lower_s + time.perf_counter() - start
    out["compile_cpu_s"] = time.process_time() - cpu
    compiled_cost = _cost(compiled)
    if math.isnan(out["gflop_per_step"]):  # e.g. TPU: only the compiled program is costed
        out["gflop_per_step"] = compiled_cost.get("flops", float("nan")) / 1e9
    # What bandwidth-bound backends (CPUs) pay for: a step's time follows it more than FLOPs.
    out["gib_accessed_per_step"] = compiled_cost.get("bytes accessed", float("nan")) / GIB
    mem = compiled.memory_analysis()
    if mem is not None:
        out["temp_gib"] = mem.temp_size_in_bytes / GIB
        out["args_gib"] = mem.argument_size_in_bytes / GIB
        out["out_gib"] = mem.output_size_in_bytes / GIB
    if measure == "memory":
        return out
    state, batch = s.state(), s.random_batch()

    def run():
        nonlocal state
        state, metrics = compiled(state, batch)
        return metrics

    per_step, cpu_per_dispatch = median_step_time(run, min_time, min_steps)
    per_step /= spd
    out["steps_per_s"] = 1.0 / per_step
    if jax.default_backend() == "cpu":
        # On a shared machine wall time depends on the other jobs; CPU time much less so
        # (on an idle machine with N cores, wall >= cpu / N).
        out["cpu_s_per_step"] = cpu_per_dispatch / spd
        out["load_avg"] = os.getloadavg()[0]
    out["examples_per_s"] = config.train.batch_size / per_step
    out["achieved_tflops"] = out["gflop_per_step"] / 1e3 / per_step
    if peak_tflops is None:
        peak_tflops, out["peak_source"] = matmul_peak_tflops(jnp.dtype(config.net.dtype)), "matmul"
    else:
        out["peak_source"] = "given"
    out["peak_tflops"] = peak_tflops
    out["mfu"] = out["achieved_tflops"] / peak_tflops
    return out


_COLUMNS = ("model", "batch", "dtype", "compile_s", "compile_cpu_s", "gflop_per_step",
            "gib_accessed_per_step", "steps_per_s",
            "examples_per_s", "cpu_s_per_step", "achieved_tflops", "peak_tflops", "mfu",
            "temp_gib", "args_gib")


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table, with an ``nfdm/vdm`` ratio row when both are present."""
    rows = list(rows)
    by_name = {r["model"]: r for r in rows}
    if "vdm" in by_name and len(rows) == 2:
        (other,) = [r for r in rows if r["model"] != "vdm"]
        vdm = by_name["vdm"]
        ratio = {"model": f"{other['model']}/vdm"}
        for k, inverse in (("gflop_per_step", False), ("gib_accessed_per_step", False),
                           ("temp_gib", False),
                           ("steps_per_s", True), ("compile_s", False)):
            if k in other and k in vdm:
                ratio[k] = vdm[k] / other[k] if inverse else other[k] / vdm[k]
        rows.append(ratio)  # steps_per_s of this row: the time ratio, NFDM step / VDM step
    cols = [c for c in _COLUMNS if any(c in r for r in rows)]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _define_flags() -> None:
    """The CLI's flags, defined only when run as a script: importing this module (the tests
    do, next to experiments.run, which owns --config too) must not define absl flags."""
    global _CONFIG, _MEASURE, _COMPARE_VDM, _MIN_TIME, _MIN_STEPS, _PEAK, _JSON, _TOPOLOGY
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.",
                                              lock_config=True)
    _MEASURE = flags.DEFINE_enum("measure", "time", ["flops", "memory", "time"],
                                 "flops: lowering only; memory: + compile; time: + run.")
    _COMPARE_VDM = flags.DEFINE_bool("compare_vdm", True, "Also benchmark the config's :vdm.")
    _MIN_TIME = flags.DEFINE_float("min_time", 10.0, "Seconds of timed dispatches per model.")
    _MIN_STEPS = flags.DEFINE_integer("min_steps", 10, "At least this many timed dispatches.")
    _PEAK = flags.DEFINE_float("peak_tflops", None, "Device peak TFLOP/s for MFU "
                               "(e.g. 989 for an H100/H200 in bf16); default: a measured matmul.")
    _JSON = flags.DEFINE_string("json", None, "Append the JSON lines to this file.")
    _TOPOLOGY = flags.DEFINE_string(
        "aot_topology", None, "Compile for this TPU slice (e.g. v5p:1x1x1) without one attached "
        "(needs libtpu); --measure flops or memory only.")
    flags.mark_flag_as_required("config")


def main(_) -> None:
    logging.get_absl_handler().addFilter(runtime.quiet_backend_probe)
    # Cold compiles: a cached executable would make compile_s meaningless.
    jax.config.update("jax_enable_compilation_cache", False)
    config = _CONFIG.value
    devices = None
    if _TOPOLOGY.value:
        if _MEASURE.value == "time":
            raise app.UsageError("--aot_topology compiles only: use --measure=flops or memory")
        devices = aot_devices(_TOPOLOGY.value)
    configs = [config]
    if _COMPARE_VDM.value and config.model.name != "vdm":
        configs.append(as_vdm(config))
    rows = []
    for c in configs:
        row = benchmark(c, _MEASURE.value, _PEAK.value, _MIN_TIME.value, _MIN_STEPS.value,
                        devices)
        rows.append(row)
        line = json.dumps(row, sort_keys=True)
        print(line, flush=True)
        if _JSON.value:
            os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
            with open(_JSON.value, "a") as f:
                f.write(line + "\n")
    print(table(rows))
    if len(rows) == 2:
        nf, vdm = rows
        msg = f"{nf['model']}/vdm: FLOPs ×{nf['gflop_per_step'] / vdm['gflop_per_step']:.3f}"
        if "gib_accessed_per_step" in nf:
            msg += (f", bytes accessed "
                    f"×{nf['gib_accessed_per_step'] / vdm['gib_accessed_per_step']:.3f}")
        if "temp_gib" in nf:
            msg += f", temporaries ×{nf['temp_gib'] / vdm['temp_gib']:.3f}"
        if "steps_per_s" in nf:
            msg += f", time ×{vdm['steps_per_s'] / nf['steps_per_s']:.3f}"
        print(msg)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
