"""Drawing samples from a trained model with nfdm_jax.sampling (pixels: ``decoders.to_pixels``)."""
from __future__ import annotations

from typing import Optional

import jax

from nfdm_jax import sampling
from nfdm_jax.models import Model, Params


def generate(model: Model, params: Params, key: jax.Array, num: int, method: str, steps: int,
             x1: Optional[jax.Array] = None, rho: float = 1.0) -> jax.Array:
    """``num`` samples ``[num, *shape]`` of z_0 (data scale), from N(0, I) or, for
    bridges, from the source batch ``x1`` (preprocessed, ``[num, *shape]``).

    ``method``: ``"sde"`` (Euler–Maruyama, ``steps`` steps) or the probability-flow ODE
    with exactly ``steps`` function evaluations by ``"euler"`` or ``"heun"``; ``rho``: the
    time grid's exponent (:func:`nfdm_jax.sampling.time_grid`).
    """
    kz, kw = jax.random.split(key)
    z = x1 if model.bridge else sampling.sample_prior(kz, (num,) + model.shape)
    if method == "sde":
        return sampling.euler_maruyama(model.drift_fn(params, x1), model.volatility_fn(params), z,
                                       kw, num_steps=steps, rho=rho)
    if method in ("euler", "heun"):
        return sampling.ode_sample(model.ode_drift_fn(params, x1), z, nfe=steps, method=method,
                                   rho=rho)
    raise ValueError(f"config.sample.method={method!r}; choose 'sde', 'euler' or 'heun'")
