"""Log-SNR schedules γ(t) for variance-preserving processes (VDM convention).

A schedule maps times ``t`` of any shape to γ(t) = log(σ_t² / α_t²) of the same
shape; γ increases with t, so SNR = exp(−γ) falls from data (t = 0) to noise.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Schedule = Callable[[Array], Array]

# VDM's CIFAR-10 endpoints.
GAMMA_MIN = -13.3
GAMMA_MAX = 5.0


def linear_gamma(gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX) -> Schedule:
    """γ(t) = γ_min + (γ_max − γ_min) t."""
    return lambda t: gamma_min + (gamma_max - gamma_min) * t


def cosine_gamma(gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX) -> Schedule:
    """The cosine schedule in log-SNR form, γ(t) = 2 log tan(a t + b), hitting both endpoints."""
    b = jnp.arctan(jnp.exp(0.5 * gamma_min))
    a = jnp.arctan(jnp.exp(0.5 * gamma_max)) - b
    return lambda t: 2.0 * jnp.log(jnp.tan(a * t + b))


def init_monotone_gamma(key: Array, gamma_min: float = GAMMA_MIN,
                        gamma_max: float = GAMMA_MAX, hidden: int = 1024) -> dict[str, Any]:
    """Parameters of VDM's learnable monotone schedule (see :func:`monotone_gamma`)."""
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "gamma_min": jnp.asarray(gamma_min, jnp.float32),
        "gamma_max": jnp.asarray(gamma_max, jnp.float32),
        "w1": jax.random.normal(k1, ()), "b1": jnp.zeros(()),
        "w2": jax.random.normal(k2, (hidden,)), "b2": jnp.zeros((hidden,)),
        "w3": jax.random.normal(k3, (hidden,)) / jnp.sqrt(hidden),
    }


def monotone_gamma(params: dict[str, Any]) -> Schedule:
    """VDM's learnable schedule: a monotone network rescaled onto [γ_min, γ_max].

    h(t) = l₁(t) + l₃(sigmoid(l₂(l₁(t)))) with positive weights (softplus of the raw
    ones) is increasing in t; γ(t) = γ_min + (γ_max − γ_min)(h(t) − h(0)) / (h(1) − h(0)).
    Gradients reach ``params`` through the returned closure.
    """
    w1, w2, w3 = (jax.nn.softplus(params[k]) for k in ("w1", "w2", "w3"))

    def h(t: Array) -> Array:
        l1 = w1 * t + params["b1"]
        lead = (1,) * l1.ndim
        inner = jax.nn.sigmoid(l1[..., None] * w2.reshape(lead + w2.shape)
                               + params["b2"].reshape(lead + w2.shape))
        return l1 + inner @ w3 / w3.shape[0]

    h0, h1 = h(jnp.zeros(())), h(jnp.ones(()))

    def gamma(t: Array) -> Array:
        frac = (h(t) - h0) / (h1 - h0)
        return params["gamma_min"] + (params["gamma_max"] - params["gamma_min"]) * frac

    return gamma
