"""Forward processes q_φ(z_t | x) as pure functions.

A *forward process* here is any callable ``forward(x, t) -> (mu, log_sigma)``
describing the Gaussian marginal ``z_t = mu + exp(log_sigma) * eps`` (SPEC §1.1):

* ``x``: data, shape ``[B, *D]``;
* ``t``: times in ``[0, 1]``, shape ``[B]``;
* ``mu``, ``log_sigma``: shape ``[B, *D]``.

Each example's output must depend on its own ``t`` only (true for per-example
networks), so that one ``jax.jvp`` over the whole batch with tangent ``ones``
yields every example's time derivative (:func:`marginal_and_velocity`).

The constructors below build the paper's neural process (boundary conditions
built in), the variance-preserving baselines, the straight OT path and the
bridge process pinned at both ends (SPEC §1.5). Processes whose marginals at
t = 0 (and t = 1) do not depend on the network say so with :class:`PinnedEnds`
(:func:`pinned_ends`), so the losses evaluate those boundary terms in closed form
instead of running the network there.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from nfdm_jax.ops import bcast_time
from nfdm_jax.schedules import Schedule

Array = jax.Array
ForwardFn = Callable[[Array, Array], tuple[Array, Array]]
# A network returning the unconstrained (m̄, l̄) of SPEC §1.1, each [B, *D].
ForwardNet = Callable[[Array, Array], tuple[Array, Array]]
BridgeNet = Callable[[Array, Array, Array], tuple[Array, Array]]

DEFAULT_DELTA = 0.01


class PinnedEnds(NamedTuple):
    """Marginals a forward process fixes for every network and every x.

    q(z_0 | x) = N(x, σ_0² I) with log σ_0 = ``log_sigma0``; if ``standard_at_one``
    also q(z_1 | x) = N(0, I), so the prior KL is exactly 0.
    """

    log_sigma0: float
    standard_at_one: bool


def with_pinned_ends(fn: Callable, ends: Optional[PinnedEnds]) -> Callable:
    """Marks ``fn`` (a forward process or bridge) as pinned at ``ends``; returns ``fn``.

    Only mark processes whose ends hold *exactly* for every parameter value: the
    losses then skip the network at t = 0 and t = 1 (same values, same gradients).
    """
    fn.pinned_ends = ends
    return fn


def pinned_ends(fn: Callable) -> Optional[PinnedEnds]:
    """The :class:`PinnedEnds` of a process built here, or None (ends evaluated numerically)."""
    return getattr(fn, "pinned_ends", None)


class Marginal(NamedTuple):
    """The Gaussian marginal of z_t and its time derivatives, all ``[B, *D]``.

    ``dmu = ∂_t μ`` and ``dlog_sigma = ∂_t log σ = ∂_t σ / σ``.
    """

    mu: Array
    log_sigma: Array
    dmu: Array
    dlog_sigma: Array

    @property
    def sigma(self) -> Array:
        return jnp.exp(self.log_sigma)


def marginal_and_velocity(forward: ForwardFn, x: Array, t: Array) -> Marginal:
    """(μ, log σ) and their t-derivatives from ONE forward-mode pass over t.

    Args:
      forward: ``forward(x, t) -> (mu, log_sigma)``.
      x: data ``[B, *D]``, held fixed.
      t: times ``[B]``.
    """
    (mu, log_sigma), (dmu, dlog_sigma) = jax.jvp(
        lambda tt: forward(x, tt), (t,), (jnp.ones_like(t),))
    return Marginal(mu, log_sigma, dmu, dlog_sigma)


def neural_forward(net: ForwardNet, delta: float = DEFAULT_DELTA,
                   straight: bool = False) -> ForwardFn:
    """The paper's Gaussian forward process with boundary conditions built in.

    μ = (1 − t) x + t (1 − t) m̄(x, t) and log σ = log s(t) + t (1 − t) l̄(x, t), so
    q(z_0 | x) = N(x, δ² I) and q(z_1 | x) = N(0, I) for any network. The untrained noise
    s(t) is the paper's δ^(1 − t), or with ``straight`` the straight path's t + (1 − t) δ
    (:func:`straight_forward`), whose untrained generative ODE is flow matching's: the
    exponential δ^(1 − t) alone makes every ODE path accelerate by (log δ)² z (NFDM-OT).

    Args:
      net: ``net(x, t) -> (m_bar, l_bar)``, each ``[B, *D]``.
      delta: the noise scale at t = 0.
      straight: the straight path's s(t) instead of δ^(1 − t).
    """
    log_delta = math.log(delta)

    def forward(x: Array, t: Array) -> tuple[Array, Array]:
        m_bar, l_bar = net(x, t)
        tb = bcast_time(t, x)
        bump = tb * (1.0 - tb)
        log_s = jnp.log(tb + (1.0 - tb) * delta) if straight else (1.0 - tb) * log_delta
        return (1.0 - tb) * x + bump * m_bar, log_s + bump * l_bar

    return with_pinned_ends(forward, PinnedEnds(log_delta, standard_at_one=True))


def vp_forward(gamma: Schedule) -> ForwardFn:
    """Variance-preserving process with log-SNR schedule γ(t) (VDM).

    μ = α_t x, σ = σ_t with α_t² = sigmoid(−γ_t), σ_t² = sigmoid(γ_t).
    """

    def forward(x: Array, t: Array) -> tuple[Array, Array]:
        g = bcast_time(gamma(t), x)
        log_alpha = 0.5 * jax.nn.log_sigmoid(-g)
        log_sigma = 0.5 * jax.nn.log_sigmoid(g)
        return jnp.exp(log_alpha) * x, jnp.broadcast_to(log_sigma, x.shape)

    return forward


def straight_forward(delta: float = DEFAULT_DELTA) -> ForwardFn:
    """The straight (flow-matching OT) path μ = (1 − t) x, σ = t + (1 − t) δ."""

    def forward(x: Array, t: Array) -> tuple[Array, Array]:
        tb = bcast_time(t, x)
        log_sigma = jnp.log(tb + (1.0 - tb) * delta)
        return (1.0 - tb) * x, jnp.broadcast_to(log_sigma, x.shape)

    return with_pinned_ends(forward, PinnedEnds(math.log(delta), standard_at_one=True))


def bridge_forward(net: BridgeNet, delta: float = DEFAULT_DELTA
                   ) -> Callable[[Array, Array, Array], tuple[Array, Array]]:
    """A Gaussian bridge pinned at x_0 (t = 0) and x_1 (t = 1) (SPEC §1.5).

    μ = (1 − t) x_0 + t x_1 + t (1 − t) m̄ and σ = δ + t (1 − t) softplus(l̄),
    so q(z_0) = N(x_0, δ²) and q(z_1) = N(x_1, δ²).

    Args:
      net: ``net(x0, x1, t) -> (m_bar, l_bar)``, each ``[B, *D]``.

    Returns:
      ``forward(x0, x1, t) -> (mu, log_sigma)``; close over ``x1`` to get a
      :data:`ForwardFn` of ``x0``.
    """

    def forward(x0: Array, x1: Array, t: Array) -> tuple[Array, Array]:
        m_bar, l_bar = net(x0, x1, t)
        tb = bcast_time(t, x0)
        bump = tb * (1.0 - tb)
        mu = (1.0 - tb) * x0 + tb * x1 + bump * m_bar
        log_sigma = jnp.log(delta + bump * jax.nn.softplus(l_bar))
        return mu, log_sigma

    # Pinned to x_1 (not N(0, I)) at t = 1; bridges have no prior term.
    return with_pinned_ends(forward, PinnedEnds(math.log(delta), standard_at_one=False))
