"""Gradient clipping: one norm over all parameters."""
import jax.numpy as jnp
import pytest

from experiments import toy2d
from nfdm_jax.train import optimizer as optim


def test_global_clipping_shrinks_every_group():
    """One network's huge gradient shrinks every network's step (one global norm)."""
    c = toy2d.get_config("tiny")
    c.unlock()
    # A clip norm far below Adam's ε (1e-8): with b1 = b2 = 0 the update is lr · g / ε,
    # proportional to the clipped gradient, so it shows the clipping.
    c.optim.clip_norm, c.optim.warmup_steps = 1e-12, 0
    c.optim.b1 = c.optim.b2 = 0.0
    opt = optim.make_optimizer(c.optim, 10)
    groups = ("forward", "predictor")
    params = {g: {"w": jnp.ones(2)} for g in groups}
    grads = {"forward": {"w": jnp.full(2, 1e3)}, "predictor": {"w": jnp.ones(2)}}
    updates, _ = opt.update(grads, opt.init(params), params)
    norm = {g: float(jnp.linalg.norm(updates[g]["w"])) for g in groups}
    assert norm["predictor"] / norm["forward"] == pytest.approx(1e-3, rel=1e-3)
    # The clipped global norm is clip_norm, so the forward update is ~lr · clip_norm / ε.
    assert norm["forward"] == pytest.approx(c.optim.lr * c.optim.clip_norm / 1e-8, rel=1e-2)
