"""Gradient clipping: one norm over all parameters."""
import jax.numpy as jnp
import pytest

from experiments import toy2d
from nfdm_jax.train import optimizer as optim


def test_global_clipping_shrinks_every_group():
    """One network's huge gradient shrinks every network's step (one global norm)."""
    c = toy2d.get_config("tiny")
    c.unlock()
    c.optim.clip_norm, c.optim.warmup_steps = 1.0, 0
    c.optim.b1 = c.optim.b2 = 0.0  # plain normalised SGD, so the update shows the clipping
    c.optim.eps = 1e3              # ≫ |clipped g|: Adam divides by ~eps, update ∝ gradient
    opt = optim.make_optimizer(c.optim, 10)
    groups = ("forward", "predictor")
    params = {g: {"w": jnp.ones(2)} for g in groups}
    grads = {"forward": {"w": jnp.full(2, 1e3)}, "predictor": {"w": jnp.ones(2)}}
    updates, _ = opt.update(grads, opt.init(params), params)
    norm = {g: float(jnp.linalg.norm(updates[g]["w"])) for g in groups}
    assert norm["predictor"] / norm["forward"] == pytest.approx(1e-3, rel=1e-3)
    # The clipped global norm is 1, so the forward update is ~lr · 1 / eps, not ~lr · 1e3 / eps.
    assert norm["forward"] == pytest.approx(c.optim.lr / c.optim.eps, rel=1e-2)
