"""Training on the toy config: sharding invariance (1 vs 8 devices, 8×1 and 4×2 meshes),
scan dispatch, no recompiles, checkpoint/resume (also onto another device count), NaN guard,
incompatible and corrupt checkpoints."""
import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from nfdm_jax.data import BatchIterator
from nfdm_jax.train import CheckpointError, Checkpointer, experiment, loop, sharding, step as steps


def run_steps(config, devices, num_dispatches):
    """(per-dispatch losses, final params as numpy, jitted step) on the given devices."""
    exp = experiment.setup(config, devices)
    state = experiment.create_state(exp)
    fn = exp.training.step(exp.key(1))
    chex.clear_trace_counter()  # counts are per code object, shared by every closure
    traced = chex.assert_max_traces(fn, n=1)
    jitted = steps.jit_train_step(traced, exp.mesh, exp.state_shardings)
    it = BatchIterator(exp.data.train, config.train.batch_size, exp.mesh, config.seed,
                       steps_per_dispatch=config.train.steps_per_dispatch)
    losses = []
    for _ in range(num_dispatches):
        state, metrics = jitted(state, next(it))
        losses.append(metrics["loss"])
    it.close()
    return np.array(jax.device_get(losses)), jax.device_get(state.params), jitted


# From NFDM's default neural-matched g and edm predictor the volatility's gradient is near zero
# for the first steps (reduction-order noise that Adam amplifies to ~lr); the δ-matched base
# gives every parameter group a real gradient, so sharding is what these tests compare.
SHARDING = {"model.volatility_base": "delta_matched"}


@pytest.fixture(scope="module")
def one_device(toy_config):
    return run_steps(toy_config(**SHARDING), jax.devices()[:1], 3)


@pytest.mark.parametrize("mesh", [{"mesh.model": 1}, {"mesh.model": 2},
                                  {"mesh.state_over_data": True}],
                         ids=["mesh8x1", "mesh4x2", "zero8x1"])
def test_sharded_matches_single_device(one_device, mesh, toy_config, sharding_tolerance):
    rtol, atol = sharding_tolerance
    losses, params, jitted = run_steps(toy_config(**SHARDING, **mesh), jax.devices(), 3)
    np.testing.assert_allclose(losses, one_device[0], rtol=rtol)
    chex.assert_trees_all_close(params, one_device[1], rtol=rtol, atol=atol)
    assert jitted._cache_size() == 1  # three dispatches, one compilation


def test_parameters_are_sharded_over_model_axis(toy_config):
    exp = experiment.setup(toy_config(**{"mesh.model": 2}), jax.devices())
    specs = [s.spec for s in jax.tree.leaves(exp.state_shardings.params)]
    assert any("model" in spec for spec in specs)
    assert sharding.param_spec((3, 5), 2, 0) == P()
    assert sharding.param_spec((6, 64), 2, 0) == P(None, "model")


def test_scan_dispatch_equals_single_steps(one_device, toy_config, sharding_tolerance):
    rtol, atol = sharding_tolerance
    config = toy_config(**SHARDING, **{"train.steps_per_dispatch": 3})
    losses, params, _ = run_steps(config, jax.devices()[:1], 1)
    np.testing.assert_allclose(losses[0], one_device[0].mean(), rtol=rtol)
    chex.assert_trees_all_close(params, one_device[1], rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory, toy_config):
    """A workdir holding a 3-step checkpoint of the toy config, trained on 1 device."""
    workdir = tmp_path_factory.mktemp("three_steps")
    loop.train(toy_config(**{"train.num_steps": 3, "train.eval_every": 0}), str(workdir),
               jax.devices()[:1])
    return workdir


def copy_of(workdir, tmp_path):
    shutil.copytree(workdir, tmp_path / "w")
    return str(tmp_path / "w")


def test_resume_on_other_device_count_equals_uninterrupted(three_steps, tmp_path, toy_config,
                                                           sharding_tolerance):
    rtol, atol = sharding_tolerance
    config = toy_config(**{"train.num_steps": 6, "train.eval_every": 0})
    straight = loop.train(config, str(tmp_path / "straight"), jax.devices()[:1])
    workdir = copy_of(three_steps, tmp_path)
    resumed = loop.train(config, workdir, jax.devices())  # 3 more steps, on 8 devices
    assert int(resumed.step) == 6
    chex.assert_trees_all_close(jax.device_get(resumed.params), jax.device_get(straight.params),
                                rtol=rtol, atol=atol)
    exp = experiment.setup(config, jax.devices()[:1])
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          exp.abstract_state, exp.state_shardings)
    ckpt = Checkpointer(workdir, 3)
    state, data_state, _ = ckpt.restore(6, target)
    ckpt.close()
    assert data_state == {"step": 6, "seed": config.seed}
    chex.assert_trees_all_close(jax.device_get(state.params), jax.device_get(resumed.params))


def test_incompatible_checkpoint_is_a_clear_error(three_steps, tmp_path, toy_config):
    wider = toy_config(**{"train.num_steps": 6, "net.hidden": 48})
    with pytest.raises(CheckpointError, match="different config"):
        loop.train(wider, copy_of(three_steps, tmp_path), jax.devices()[:1])


def test_checkpoint_of_another_tree_structure_is_a_config_error_and_stays(three_steps, tmp_path,
                                                                          toy_config):
    """Same leaves, another tree (e.g. an optimizer with an extra stateless stage): Orbax
    refuses it; that is a different config, not corruption, so nothing is moved aside."""
    import optax

    workdir = copy_of(three_steps, tmp_path)
    exp = experiment.setup(toy_config(**{"train.num_steps": 3}), jax.devices()[:1])
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          exp.abstract_state, exp.state_shardings)
    other = target.replace(opt_state=(target.opt_state, optax.EmptyState()))
    ckpt = Checkpointer(workdir, 3)
    with pytest.raises(CheckpointError, match="different config"):
        ckpt.restore_latest(other)
    ckpt.close()
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["3"]


def test_no_verifiable_checkpoint_is_a_clear_error(three_steps, tmp_path, toy_config):
    workdir = copy_of(three_steps, tmp_path)
    state_dir = os.path.join(workdir, "checkpoints", "3", "state")
    for name in os.listdir(state_dir):
        path = os.path.join(state_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else open(path, "wb").close()
    with pytest.raises(CheckpointError, match="no checkpoint .* verifies"):
        loop.train(toy_config(**{"train.num_steps": 6}), workdir, jax.devices()[:1])
    assert os.listdir(os.path.join(workdir, "checkpoints_rejected")) == ["3"]  # kept, aside


def test_nan_guard_names_step_and_checkpoint(tmp_path, toy_config):
    config = toy_config(**{"optim.lr": 1e30, "optim.clip_norm": 1e30, "optim.warmup_steps": 0,
                           "train.num_steps": 4, "train.eval_every": 0})
    with pytest.raises(FloatingPointError, match=r"non-finite metrics at step \d+.*checkpoint"):
        loop.train(config, str(tmp_path), jax.devices()[:1])


def test_eval_and_sample_modes(three_steps, tmp_path, toy_config, monkeypatch):
    config = toy_config(**{"train.num_steps": 3})
    workdir = copy_of(three_steps, tmp_path)
    barriers = []  # each compiled program is followed by the hosts' barrier, once
    monkeypatch.setattr(loop, "_all_compiled", barriers.append)
    metrics = loop.run_eval(config, workdir)
    assert barriers == ["eval"]
    assert np.isfinite(metrics["bpd"]) and set(metrics) >= {"diff", "rec", "prior", "total"}
    assert metrics["bpd_stderr"] > 0 and metrics["total_stderr"] > 0
    with open(os.path.join(workdir, "eval", "3.json")) as f:
        record = json.load(f)
    assert record["count"] == config.data.eval_size and record["checkpoint_step"] == 3
    assert record["terms"]["bpd"]["mean"] == pytest.approx(metrics["bpd"])
    samples = np.load(loop.run_sample(config, workdir))["samples"]
    assert barriers == ["eval", "sample"]
    assert samples.shape == (config.sample.num, 2) and np.all(np.isfinite(samples))


def test_already_complete_run_says_so_and_does_not_train(three_steps, tmp_path, toy_config,
                                                         caplog):
    workdir = copy_of(three_steps, tmp_path)
    with caplog.at_level("INFO"):
        state = loop.train(toy_config(**{"train.num_steps": 3}), workdir, jax.devices()[:1])
    assert int(state.step) == 3 and "already complete" in caplog.text


DISPATCH_AHEAD = r"""
import sys
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from nfdm_jax import ops
mesh = jax.make_mesh((4,), ("d",))
x = jax.device_put(jnp.ones((4, 64)), NamedSharding(mesh, P("d")))
w = jax.device_put(jnp.ones((64, 64)), NamedSharding(mesh, P()))
step = jax.jit(lambda w, x: w - 1e-6 * jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w) ** 2))(w))
outputs = []
for _ in range(400):  # a data-parallel step: one all-reduce over the 4 devices
    w = step(w, x)
    outputs.append(w)
    ops.bound_in_flight(outputs, int(sys.argv[1]))
print("DONE", float(jax.device_get(w)[0, 0]))
"""


def test_the_dispatch_bound_keeps_the_cpu_runtime_from_hanging():
    """400 chained all-reduce steps on 4 CPU devices, dispatched without fetching: JAX's CPU
    runtime hangs beyond 32 queued multi-device programs (measured at 40), so the train loop,
    the evaluator and checkpoint saves bound their look-ahead with ops.bound_in_flight. In a
    subprocess, so that a regression fails after a timeout instead of hanging the suite."""
    import subprocess
    import sys

    from nfdm_jax import ops

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    try:
        out = subprocess.run([sys.executable, "-c", DISPATCH_AHEAD, str(ops.MAX_IN_FLIGHT)],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{ops.MAX_IN_FLIGHT} dispatches in flight hung the CPU runtime: "
                    f"{(e.stderr or '')[-1500:]}")
    assert "DONE" in out.stdout, out.stderr[-3000:]


def test_console_lines_show_what_a_user_reads(tmp_path, caplog):
    """The train line: objective, bound, gradient norm, speed and learning rate, in that order;
    every other metric (``prior`` is always 0 for NFDM) goes to TensorBoard only."""
    import logging

    from nfdm_jax.train.summaries import MetricWriter

    metrics = {"bpd": 2.5, "diff": 3.0, "grad_norm": 1.5, "grad_norm_forward": 1.0, "loss": 1.7,
               "lr": 1e-3, "param_norm": 40.0, "prior": 0.0, "rec": 0.1, "steps_per_sec": 8.0,
               "step_time": 0.125, "total": 3.1}
    writer = MetricWriter(str(tmp_path))
    with caplog.at_level(logging.INFO):
        writer.scalars(7, metrics, "train")
        writer.scalars(7, {"bpd": 2.0, "bpd_stderr": 0.1, "diff": 1.9, "prior": 0.0}, "eval")
    writer.close()
    lines = [r.getMessage() for r in caplog.records if "step 7" in r.getMessage()]
    assert lines == ["[train] step 7  loss=1.7  bpd=2.5  grad_norm=1.5  steps_per_sec=8  lr=0.001",
                     "[eval] step 7  bpd=2  bpd_stderr=0.1"]
    assert os.listdir(tmp_path / "tensorboard")  # everything else is in the event file
