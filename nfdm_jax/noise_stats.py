"""A running estimate, per time, of how far a learned forward process's noise has moved.

The ``edm`` scalings (:func:`nfdm_jax.drifts.edm_scalings`) whiten the predictor's input
and target for a *linear* base process z = b + a x + s ε. NFDM's learned process leaves
that base as it trains: on the digits its σ(t) grows 5–10× above s(t) within 12 000 steps,
and the std of the predictor's regression target grows with it (issue #9). This module
tracks the variance ratio

    r(t) = E_x mean_d σ_φ(x, t)² / s(t)²

on K evenly spaced times 0, 1/(K − 1), ..., 1 as an exponential moving average of the
training batches' own (t, log r) — the loss has already run the forward network at
those points — so that the scalings can use s(t) √r(t) and stay whitening.

Each example adds its value to the two nearest grid times with linear-interpolation
weights; a grid time's estimate is its weighted EMA sum over its weight. Grid times no
example has reached yet read log r = 0, i.e. the base. State: :mod:`nfdm_jax.running_means`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nfdm_jax import running_means

Array = jax.Array
NoiseStats = dict[str, Array]


def init(num_times: int = 33) -> NoiseStats:
    """Empty statistics on ``num_times`` ≥ 2 grid times: every estimate reads log r = 0."""
    if num_times < 2:
        raise ValueError(f"num_times={num_times}: the grid needs both ends, t = 0 and t = 1")
    return running_means.init(num_times)


def _hat_weights(t: Array, num_times: int) -> Array:
    """Linear-interpolation weights of times ``t`` ``[B]`` on the grid, ``[B, K]``; rows sum to 1."""
    position = jnp.clip(t, 0.0, 1.0)[:, None] * (num_times - 1)
    return jax.nn.relu(1.0 - jnp.abs(position - jnp.arange(num_times, dtype=t.dtype)[None, :]))


def update(stats: NoiseStats, t: Array, log_ratio: Array, decay: float) -> NoiseStats:
    """Folds one batch's per-example ``log_ratio`` ``[B]`` at times ``t`` ``[B]`` in.

    ``decay`` ∈ [0, 1): the weight of the past per update (0.999 averages over ~1 000
    batches). Gradients do not flow into the statistics.
    """
    return running_means.update(stats, _hat_weights(t, stats["sum"].shape[0]), log_ratio, decay)


def log_ratio(stats: NoiseStats, t: Array) -> Array:
    """The estimate of log r(t) at times ``t`` ``[B]``, interpolated linearly; ``[B]``."""
    at_grid, _ = running_means.read(stats)
    return _hat_weights(t, at_grid.shape[0]) @ at_grid


def per_example_log_ratio(log_sigma: Array, log_s: Array) -> Array:
    """log(mean_d σ²) − log(mean_d s²) per example, from ``[B, *D]`` log-scales; ``[B]``."""
    axes = tuple(range(1, log_sigma.ndim))
    return (jax.nn.logsumexp(2.0 * log_sigma, axis=axes)
            - jax.nn.logsumexp(2.0 * log_s, axis=axes))
