"""Importance sampling of the diffusion time t, adapted to the loss while training.

L_diff = ∫₀¹ ℓ(t) dt is estimated from one t per example. With t uniform, the estimate's
variance is ∫ E[ℓ(t)²] dt − L_diff²; most of it comes from a few times: on the digits the
integrand is ~0 below t ≈ 0.3 and peaks near t ≈ 0.45, and the one-sample std is ~1.3×
L_diff itself. Drawing t from p(t) ∝ √E[ℓ(t)²] and weighting by 1/p(t) keeps the estimate
unbiased and minimises its variance (Nichol & Dhariwal 2021, "Improved DDPM", §3.3); on
the digits it is 8–10× smaller (issue #9).

The density is piecewise constant on K equal bins of [t_min, 1 − t_min]. Each bin keeps an
exponential moving average of the batch's ℓ² that fell in it (:mod:`nfdm_jax.running_means`),
so a bin's estimate stays put while no sample reaches it. A bin no sample has reached yet reads the
largest estimate (so it gets sampled), and a share ``uniform_weight`` of the density stays
uniform, which bounds the weights 1/p(t) by 1 / uniform_weight.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nfdm_jax import running_means

Array = jax.Array
TimeDensity = dict[str, Array]


def init(num_bins: int = 32) -> TimeDensity:
    """An empty histogram on ``num_bins`` ≥ 1 bins: the density it gives is uniform."""
    if num_bins < 1:
        raise ValueError(f"num_bins={num_bins}: the density needs at least one bin")
    return running_means.init(num_bins)


def density(state: TimeDensity, uniform_weight: float) -> Array:
    """The sampling density on each bin, relative to uniform (mean 1); ``[K]``.

    (1 − ``uniform_weight``) · √m / mean(√m) + ``uniform_weight``, with m the bins' mean
    squared loss; uniform while no bin holds a positive estimate.
    """
    mean_square, seen = running_means.read(state)
    rms = jnp.sqrt(mean_square)
    rms = jnp.where(seen, rms, jnp.max(rms))
    mean = jnp.mean(rms)
    shape = jnp.where(mean > 0, rms / jnp.where(mean > 0, mean, 1.0), 1.0)
    return (1.0 - uniform_weight) * shape + uniform_weight


def warp(state: TimeDensity, u: Array, uniform_weight: float) -> tuple[Array, Array]:
    """Uniform ``u`` ∈ [0, 1) through the density's inverse CDF: s ∈ [0, 1) and the weight
    1/p(s); each shaped like ``u``. The identity (weights 1) for a uniform density."""
    p = density(state, uniform_weight)
    k = p.shape[0]
    cdf = jnp.concatenate([jnp.zeros((1,), p.dtype), jnp.cumsum(p) / k])
    u = u * cdf[-1]  # 1 up to rounding
    b = jnp.clip(jnp.searchsorted(cdf, u, side="right") - 1, 0, k - 1)
    s = jnp.clip((b + (u - cdf[b]) * k / p[b]) / k, 0.0, 1.0)
    return s, 1.0 / p[b]


def sample(state: TimeDensity, key: Array, n: int, uniform_weight: float,
           t_min: float = 0.0) -> tuple[Array, Array]:
    """``n`` times stratified under the density, and their weights 1/p(t); each ``[n]``.

    u_i = (u + i / n) mod 1 as in :func:`nfdm_jax.losses.stratified_times`, through
    :func:`warp`, so a uniform density gives exactly those times, with weights 1. The
    weighted mean of any f(t) is an unbiased estimate of its mean over t ∈ [t_min, 1 − t_min].
    """
    u = jnp.mod(jax.random.uniform(key, ()) + jnp.arange(n) / n, 1.0)
    s, weight = warp(state, u, uniform_weight)
    return t_min + (1.0 - 2.0 * t_min) * s, weight


def update(state: TimeDensity, t: Array, loss: Array, decay: float,
           t_min: float = 0.0) -> TimeDensity:
    """Folds one batch's unweighted integrand ``loss`` ``[B]`` at times ``t`` ``[B]`` in.

    ``decay`` ∈ [0, 1) is the weight of the past per update. Gradients do not flow in.
    """
    k = state["sum"].shape[0]
    s = (t - t_min) / (1.0 - 2.0 * t_min)
    onehot = jax.nn.one_hot(jnp.clip(jnp.floor(s * k), 0, k - 1).astype(jnp.int32), k,
                            dtype=state["sum"].dtype)
    return running_means.update(state, onehot, jnp.square(jax.lax.stop_gradient(loss)), decay)
