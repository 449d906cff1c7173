"""Volatility g_φ(t) of the forward and reverse SDEs, as g(t)².

A volatility is any callable ``volatility(t) -> g2`` mapping times ``[B]`` to the
squared diffusion coefficient g(t)² ≥ 0, shape ``[B]``. The losses use g² only
(L_diff divides by 2g²); samplers take its square root. Zero volatility gives
the deterministic NFDM-OT model.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from nfdm_jax.schedules import Schedule, linear_gamma

Array = jax.Array
Volatility = Callable[[Array], Array]

# softplus(_SOFTPLUS_INV_ONE) == 1, so a zero-initialised network starts at the base volatility.
_SOFTPLUS_INV_ONE = math.log(math.expm1(1.0))


def zero() -> Volatility:
    """g ≡ 0: the deterministic (NFDM-OT) model."""
    return jnp.zeros_like


def constant(g2: float) -> Volatility:
    """g(t)² = ``g2`` for all t."""
    return lambda t: jnp.full_like(t, g2)


def vp_matching(gamma: Schedule) -> Volatility:
    """g² = σ_t² γ'(t): the volatility under which a VP process's NELBO is VDM's loss.

    With it the conditional forward SDE forgets x, and the bound is tight for the
    exact posterior-mean predictor (SPEC §1.3).
    """

    def g2(t: Array) -> Array:
        g, dg = jax.jvp(gamma, (t,), (jnp.ones_like(t),))
        return jax.nn.sigmoid(g) * dg

    return g2


def linear_snr(gamma_min: float, gamma_max: float) -> Volatility:
    """The fixed volatility matching a linear log-SNR schedule between the given endpoints."""
    return vp_matching(linear_gamma(gamma_min, gamma_max))


def delta_matched(delta: float) -> Volatility:
    """VP-matching volatility for a linear log-SNR from 2 log δ to −2 log δ.

    A sensible start for the neural forward process, whose σ runs from δ to 1.
    """
    return linear_snr(2.0 * math.log(delta), -2.0 * math.log(delta))


def neural_matched(delta: float, min_gap: float = 1e-4) -> Volatility:
    """The volatility under which the *untrained* neural process forgets x.

    A zero network gives μ = a(t) x with a = 1 − t and σ = δ^(1−t). The conditional forward
    SDE drift f + (g²/2)∇log q = ∂μ + (∂log σ − g²/(2σ²))(z − μ) is then free of x iff
    g² = 2σ²(∂log σ − ∂log a) = 2σ²(−log δ + 1/(1 − t)): the analogue of VP's σ²γ'. As
    the base of :func:`learned`, NFDM starts as a diffusion whose bound is tight for the
    exact predictor, instead of one whose g is ~10³× off. ``1 − t`` is floored at
    ``min_gap`` because g² diverges at t = 1, as VP's does when γ(1) = ∞.
    """
    log_delta = math.log(delta)

    def g2(t: Array) -> Array:
        rate = -log_delta + 1.0 / jnp.maximum(1.0 - t, min_gap)
        return 2.0 * jnp.exp(2.0 * (1.0 - t) * log_delta) * rate

    return g2


def straight_matched(delta: float, min_gap: float = 1e-4) -> Volatility:
    """The volatility under which the straight path μ = (1 − t) x, σ = t + (1 − t) δ forgets
    x: g² = 2σ²(∂log σ − ∂log a) = 2σ(1 − δ) + 2σ² / (1 − t), as :func:`neural_matched`
    for the paper's process (``1 − t`` floored at ``min_gap``)."""

    def g2(t: Array) -> Array:
        sigma = t + (1.0 - t) * delta
        return 2.0 * sigma * (1.0 - delta) + 2.0 * jnp.square(sigma) / jnp.maximum(
            1.0 - t, min_gap)

    return g2


def learned(net: Callable[[Array], Array], base: Volatility) -> Volatility:
    """Learnable volatility g² = base(t) · softplus(net(t) + softplus⁻¹(1)).

    Positive for any network; a zero-initialised ``net`` (``[B] -> [B]``) starts
    exactly at ``base``, e.g. :func:`neural_matched`, rather than at an arbitrary
    constant (SPEC §1.3).
    """
    return lambda t: base(t) * jax.nn.softplus(net(t) + _SOFTPLUS_INV_ONE)
