"""Gradient clipping: one norm over all parameters, or one per parameter group."""
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import toy2d
from nfdm_jax.train import optimizer as optim


def first_update(clip):
    c = toy2d.get_config("tiny")
    c.unlock()
    c.optim.clip, c.optim.clip_norm, c.optim.warmup_steps = clip, 1.0, 0
    c.optim.b1 = c.optim.b2 = 0.0  # plain normalised SGD, so the update shows the clipping
    c.optim.eps = 1e3              # ≫ |clipped g|: Adam divides by ~eps, update ∝ gradient
    opt = optim.make_optimizer(c.optim, 10)
    params = {g: {"w": jnp.ones(2)} for g in optim.GROUPS}
    grads = {g: {"w": jnp.ones(2)} for g in optim.GROUPS}
    grads["forward"]["w"] = jnp.full(2, 1e3)   # one group with a huge gradient
    updates, _ = opt.update(grads, opt.init(params), params)
    return {g: float(jnp.linalg.norm(updates[g]["w"])) for g in optim.GROUPS}


def test_global_clipping_shrinks_every_group_and_per_group_does_not():
    glob, per = first_update("global"), first_update("per_group")
    # Global: the forward group's norm dominates, so the predictor's step shrinks ~1000×.
    assert glob["predictor"] / glob["forward"] == pytest.approx(1e-3, rel=1e-3)
    # Per group: each group's gradient is clipped to norm ≤ 1 on its own.
    np.testing.assert_allclose(per["forward"], per["volatility"] * 1.0, rtol=1e-6)
    assert per["predictor"] > 500 * glob["predictor"]


def test_running_statistics_are_not_trainable():
    params = {g: {"w": jnp.ones(2)} for g in optim.GROUPS} | {"stats": {"sum": jnp.ones(3)}}
    assert set(optim.trainable(params)) == set(optim.GROUPS)


def test_unknown_clip_is_named():
    c = toy2d.get_config("tiny")
    c.unlock()
    c.optim.clip = "layer"
    with pytest.raises(ValueError, match="config.optim.clip='layer'"):
        optim.make_optimizer(c.optim, 10)
