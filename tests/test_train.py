"""Training on the toy config: sharding invariance (1 vs 8 devices, 8×1 and 4×2 meshes),
scan dispatch, no recompiles, checkpoint/resume (also onto another device count), NaN guard,
incompatible and corrupt checkpoints."""
import os
import shutil

import chex
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from experiments import toy2d
from nfdm_jax.data import BatchIterator
from nfdm_jax.train import CheckpointError, Checkpointer, loop, sharding, step as steps

# Float32 reductions over differently sharded batches reorder sums: a few ulps per step,
# amplified by 3 Adam steps on ~1e3-scale losses. Parameters move by ~lr = 1e-3 per step.
# Adam divides each gradient by its own running RMS, so a weight whose gradient is pure
# reduction-order noise (the volatility net's first layer, behind a zero-initialised output
# layer) still moves by ~lr, in a direction set by the device layout's summation order:
# hence atol 5e-5 (5 % of one step), not 1e-5.
# A real sharding bug (wrong averaging, a dropped shard) changes every parameter by O(lr).
RTOL, ATOL = 1e-4, 5e-5


def toy_config(**overrides):
    c = toy2d.get_config("tiny")
    c.unlock()
    c.mesh.shard_min_size = 0  # shard every divisible parameter when mesh.model > 1
    # From NFDM's default neural-matched g and edm predictor the volatility's gradient is
    # near zero for the first steps (reduction-order noise that Adam amplifies to ~lr);
    # the δ-matched base gives every group a real gradient, so sharding is what is tested.
    c.model.volatility_base = "delta_matched"
    for k, v in overrides.items():
        node, *path = k.split(".")
        target = c[node]
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = v
    c.lock()
    return c


def run_steps(config, devices, num_dispatches):
    """(per-dispatch losses, final params as numpy, jitted step) on the given devices."""
    exp = loop.setup(config, devices)
    state = loop.create_state(exp)
    fn = steps.make_train_step(exp.model, exp.optimizer, exp.schedule, exp.key(1),
                               config.optim.ema_decay)
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


@pytest.fixture(scope="module")
def one_device():
    return run_steps(toy_config(), jax.devices()[:1], 3)


@pytest.mark.parametrize("model_axis", [1, 2], ids=["mesh8x1", "mesh4x2"])
def test_sharded_matches_single_device(one_device, model_axis):
    losses, params, jitted = run_steps(toy_config(**{"mesh.model": model_axis}), jax.devices(), 3)
    np.testing.assert_allclose(losses, one_device[0], rtol=RTOL)
    chex.assert_trees_all_close(params, one_device[1], rtol=RTOL, atol=ATOL)
    assert jitted._cache_size() == 1  # three dispatches, one compilation


def test_parameters_are_sharded_over_model_axis():
    exp = loop.setup(toy_config(**{"mesh.model": 2}), jax.devices())
    specs = [s.spec for s in jax.tree.leaves(exp.state_shardings.params)]
    assert any("model" in spec for spec in specs)
    assert sharding.param_spec((3, 5), 2, 0) == P()
    assert sharding.param_spec((6, 64), 2, 0) == P(None, "model")


def test_scan_dispatch_equals_single_steps(one_device):
    losses, params, _ = run_steps(toy_config(**{"train.steps_per_dispatch": 3}), jax.devices()[:1], 1)
    np.testing.assert_allclose(losses[0], one_device[0].mean(), rtol=RTOL)
    chex.assert_trees_all_close(params, one_device[1], rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    """A workdir holding a 3-step checkpoint of the toy config, trained on 1 device."""
    workdir = tmp_path_factory.mktemp("three_steps")
    loop.train(toy_config(**{"train.num_steps": 3, "train.eval_every": 0}), str(workdir),
               jax.devices()[:1])
    return workdir


def copy_of(workdir, tmp_path):
    shutil.copytree(workdir, tmp_path / "w")
    return str(tmp_path / "w")


def test_resume_on_other_device_count_equals_uninterrupted(three_steps, tmp_path):
    config = toy_config(**{"train.num_steps": 6, "train.eval_every": 0})
    straight = loop.train(config, str(tmp_path / "straight"), jax.devices()[:1])
    workdir = copy_of(three_steps, tmp_path)
    resumed = loop.train(config, workdir, jax.devices())  # 3 more steps, on 8 devices
    assert int(resumed.step) == 6
    chex.assert_trees_all_close(jax.device_get(resumed.params), jax.device_get(straight.params),
                                rtol=RTOL, atol=ATOL)
    exp = loop.setup(config, jax.devices()[:1])
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          exp.abstract_state, exp.state_shardings)
    ckpt = Checkpointer(workdir, 3)
    state, data_state = ckpt.restore(6, target)
    ckpt.close()
    assert data_state == {"step": 6, "seed": config.seed}
    chex.assert_trees_all_close(jax.device_get(state.params), jax.device_get(resumed.params))


def test_incompatible_checkpoint_is_a_clear_error(three_steps, tmp_path):
    wider = toy_config(**{"train.num_steps": 6, "net.hidden": 48})
    with pytest.raises(CheckpointError, match="different config"):
        loop.train(wider, copy_of(three_steps, tmp_path), jax.devices()[:1])


def test_corrupt_checkpoint_is_a_clear_error(three_steps, tmp_path):
    workdir = copy_of(three_steps, tmp_path)
    state_dir = os.path.join(workdir, "checkpoints", "3", "state")
    for name in os.listdir(state_dir):
        path = os.path.join(state_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else open(path, "wb").close()
    with pytest.raises(CheckpointError, match="corrupt"):
        loop.train(toy_config(**{"train.num_steps": 6}), workdir, jax.devices()[:1])


def test_nan_guard_names_step_and_checkpoint(tmp_path):
    config = toy_config(**{"optim.lr": 1e30, "optim.clip_norm": 1e30, "optim.warmup_steps": 0,
                           "train.num_steps": 4, "train.eval_every": 0})
    with pytest.raises(FloatingPointError, match=r"non-finite metrics at step \d+.*checkpoint"):
        loop.train(config, str(tmp_path), jax.devices()[:1])




def test_eval_and_sample_modes(three_steps, tmp_path):
    config = toy_config(**{"train.num_steps": 3})
    workdir = copy_of(three_steps, tmp_path)
    metrics = loop.run_eval(config, workdir)
    assert np.isfinite(metrics["bpd"]) and set(metrics) >= {"diff", "rec", "prior", "total"}
    samples = np.load(loop.run_sample(config, workdir))["samples"]
    assert samples.shape == (config.sample.num, 2) and np.all(np.isfinite(samples))
