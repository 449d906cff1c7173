"""Scores and drifts of the forward and generative processes (SPEC §1.1–§1.2).

All functions act on a batch: ``z`` and the fields of a :class:`Marginal` are
``[B, *D]``; ``g2`` (the squared volatility) and ``t`` are ``[B]``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from nfdm_jax.forward import ForwardFn, Marginal, marginal_and_velocity
from nfdm_jax.ops import bcast_time
from nfdm_jax.volatility import Volatility

Array = jax.Array
Predictor = Callable[[Array, Array], Array]
Drift = Callable[[Array, Array], Array]


def score(m: Marginal, z: Array) -> Array:
    """∇_z log q(z | x) = (μ − z) / σ²."""
    return (m.mu - z) * jnp.exp(-2.0 * m.log_sigma)


def _reverse_rate(m: Marginal, g2: Array) -> Array:
    # f^B = ∂μ + a (z − μ) with a = ∂log σ + g² / (2σ²): the whole drift is affine in z.
    return m.dlog_sigma + 0.5 * bcast_time(g2, m.mu) * jnp.exp(-2.0 * m.log_sigma)


def ode_drift(m: Marginal, z: Array) -> Array:
    """Conditional ODE drift f = ∂_t μ + (∂_t σ / σ)(z − μ)."""
    return m.dmu + m.dlog_sigma * (z - m.mu)


def reverse_drift(m: Marginal, z: Array, g2: Array) -> Array:
    """Reverse-time conditional drift f^B = f − (g² / 2) ∇_z log q."""
    return m.dmu + _reverse_rate(m, g2) * (z - m.mu)


def reverse_drift_difference(m: Marginal, m_hat: Marginal, z: Array, g2: Array) -> Array:
    """f^B(z, t, x) − f^B(z, t, x̂), without cancelling large terms.

    Written as (∂μ − ∂μ̂) + (a − â)(z − μ) + â(μ̂ − μ); when σ does not depend on x
    (VP, straight path) a − â is exactly zero and the result is exact to rounding.
    """
    a, a_hat = _reverse_rate(m, g2), _reverse_rate(m_hat, g2)
    return (m.dmu - m_hat.dmu) + (a - a_hat) * (z - m.mu) + a_hat * (m_hat.mu - m.mu)


def preconditioned(net: Callable[[Array, Array], Array], delta: float) -> Predictor:
    """The paper's predictor x̂(z, t) = (1 − t) z + (t + δ) net(z, t)."""

    def predictor(z: Array, t: Array) -> Array:
        tb = bcast_time(t, z)
        return (1.0 - tb) * z + (tb + delta) * net(z, t)

    return predictor


def wiener_preconditioned(net: Callable[[Array, Array], Array], delta: float,
                          data_std: float = 0.5) -> Predictor:
    """x̂(z, t) = c_skip z + c_out net(z, t), scaled for the *untrained* neural process.

    With a = 1 − t and s = δ^(1−t) (the process of a zero forward network) and data of
    per-dimension std σ_d, c_skip = a σ_d² / (a² σ_d² + s²) makes x̂ the linear
    posterior mean when ``net`` outputs 0, and c_out = s σ_d / √(a² σ_d² + s²) is the
    posterior std, so the network's target has unit scale at every t (as in EDM). The
    paper's :func:`preconditioned` instead starts at x̂ = (1 − t) z, whose error at small t
    is amplified by an SNR of ~1/δ² in L_diff; this start trains images much faster.
    """
    log_delta = jnp.log(delta)

    def predictor(z: Array, t: Array) -> Array:
        tb = bcast_time(t, z)
        a, s2 = 1.0 - tb, jnp.exp(2.0 * (1.0 - tb) * log_delta)
        total = jnp.square(a * data_std) + s2
        c_skip = a * data_std ** 2 / total
        c_out = jnp.sqrt(s2) * data_std * jax.lax.rsqrt(total)
        return c_skip * z + c_out * net(z, t)

    return predictor


def generative_drift(forward: ForwardFn, predictor: Predictor,
                     volatility: Volatility) -> Drift:
    """f̂(z, t) = f^B(z, t, x̂(z, t)), the drift of the reverse SDE (SPEC §1.2).

    With ``volatility.zero()`` this is the deterministic model's ODE drift
    f(z, t, x̂(z, t)). Costs one predictor call and one jvp of the forward process at x̂.
    """

    def drift(z: Array, t: Array) -> Array:
        m_hat = marginal_and_velocity(forward, predictor(z, t), t)
        return reverse_drift(m_hat, z, volatility(t))

    return drift

