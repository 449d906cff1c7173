"""Train-step benchmark: compile time, steps/s, examples/s, peak memory and XLA's FLOP count.

    python -m benchmarks.train_step --config=experiments/cifar10.py --steps=20 [--compare_vdm]

Batches are random data of the config's shape (no dataset needed); everything else is the
real training path: the config's mesh, shardings, donated state and ``steps_per_dispatch``.
``--compare_vdm`` also times the plain-diffusion (VDM, ε-parameterised, fixed linear γ) step
on the same predictor U-Net and prints the NFDM/VDM time and FLOP ratios (the paper reports
about 2.2× per iteration).
"""
from __future__ import annotations

import resource
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from nfdm_jax.data.registry import example_shape
from nfdm_jax.models import Model
from nfdm_jax.train import sharding, step as steps
from nfdm_jax.train.optimizer import learning_rate, make_optimizer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed dispatches (after one warm-up).")
_COMPARE_VDM = flags.DEFINE_bool("compare_vdm", False, "Also benchmark the VDM step.")
flags.mark_flag_as_required("config")


def _peak_memory_bytes() -> tuple[int, str]:
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak"
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host peak RSS"


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan")))


def benchmark(config: ml_collections.ConfigDict, num_steps: int) -> dict[str, float]:
    """Times ``num_steps`` dispatches of the jitted train step on random batches."""
    t = config.train
    shape = example_shape(config.data)
    mesh = sharding.make_mesh(config)
    sharding.check_batch(mesh, t.batch_size)
    model = Model(config, shape)
    optimizer = make_optimizer(config.optim, t.num_steps)
    rng = np.random.default_rng(0)
    stacked = (t.steps_per_dispatch, t.batch_size) + shape
    fields = ["x", "x1"] if model.bridge else ["x"]
    if len(shape) == 3:
        host = {f: rng.integers(0, 256, stacked, dtype=np.uint8) for f in fields}
    else:
        host = {f: rng.standard_normal(stacked).astype(np.float32) for f in fields}
    batch = jax.device_put(host, sharding.batch_sharding(mesh, True))
    example = {f: v[0, :1] for f, v in host.items()}
    init = lambda key: steps.init_state(model, optimizer, key, example)  # noqa: E731
    shardings = sharding.tree_shardings(mesh, jax.eval_shape(init, jax.random.PRNGKey(0)),
                                        config.mesh.shard_min_size)
    state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(config.seed))
    train_step = steps.jit_train_step(
        steps.make_train_step(model, optimizer, learning_rate(config.optim, t.num_steps),
                              jax.random.PRNGKey(1), config.optim.ema_decay), mesh, shardings)

    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(num_steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    per_step = (time.perf_counter() - start) / (num_steps * t.steps_per_dispatch)
    memory, memory_kind = _peak_memory_bytes()
    return {"compile_s": compile_s, "steps_per_s": 1.0 / per_step,
            "examples_per_s": t.batch_size / per_step,
            "flops_per_step": _flops(compiled) / t.steps_per_dispatch,
            "params": sum(x.size for x in jax.tree.leaves(state.params)),
            f"memory_gib ({memory_kind})": memory / 2 ** 30}


def as_vdm(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same config as a VDM: fixed linear γ, VP-matching g, ε-parameterised U-Net."""
    c = config.copy_and_resolve_references()
    c.model.name, c.model.volatility, c.model.parameterization = "vdm", "vp_matching", "eps"
    return c


def _print(name: str, result: dict[str, float]) -> None:
    print(f"{name}: " + "  ".join(f"{k}={v:.4g}" for k, v in result.items()))


def main(_) -> None:
    config = _CONFIG.value
    print(f"{jax.device_count()} × {jax.devices()[0].device_kind}, global batch "
          f"{config.train.batch_size}, {config.train.steps_per_dispatch} step(s)/dispatch")
    result = benchmark(config, _STEPS.value)
    _print(config.model.name, result)
    if _COMPARE_VDM.value and config.model.name != "vdm":
        vdm = benchmark(as_vdm(config), _STEPS.value)
        _print("vdm", vdm)
        print(f"{config.model.name}/vdm: time ×{vdm['steps_per_s'] / result['steps_per_s']:.2f}, "
              f"FLOPs ×{result['flops_per_step'] / vdm['flops_per_step']:.2f}")


if __name__ == "__main__":
    app.run(main)
