"""Objectives of NFDM, NFDM-OT and NFBM as pure functions (SPEC §1.3–§1.5).

Networks enter as callables closed over their parameters, so ``jax.grad`` of an
outer function of all parameters differentiates the forward process, the
volatility and the predictor together:

    def loss(params, x, key):
        forward = neural_forward(lambda x, t: fwd_net.apply(params["fwd"], x, t))
        ...
        return nelbo(forward, predictor, volatility, x, key, decoder_nll=dec).total.mean()

Every loss returns per-example terms ``[B]`` in nats (NFDM-OT adds its curvature
penalty) in a NamedTuple; reduce them yourself, or use :func:`bits_per_dim`.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

from nfdm_jax.decoders import DecoderNLL
from nfdm_jax.drifts import (Predictor, generative_drift, ode_drift,
                             reverse_drift_difference)
from nfdm_jax.forward import (ForwardFn, Marginal, marginal_and_velocity, pinned_ends,
                              with_pinned_ends)
from nfdm_jax.ops import sum_per_example
from nfdm_jax.volatility import Volatility
from nfdm_jax.volatility import zero as zero_volatility

Array = jax.Array


class NELBOTerms(NamedTuple):
    """Per-example terms of the NELBO in nats, each ``[B]``."""

    diff: Array
    rec: Array
    prior: Array

    @property
    def total(self) -> Array:
        return self.diff + self.rec + self.prior

    @property
    def bound(self) -> Array:
        """The NELBO in nats (here the whole objective)."""
        return self.total


class OTTerms(NamedTuple):
    """Per-example NFDM-OT terms, each ``[B]``: the NELBO's terms in nats and the weighted
    curvature penalty λ ‖σ_t ⊙ d²z/dt²‖² of the probability-flow ODE."""

    diff: Array
    rec: Array
    prior: Array
    curvature: Array

    @property
    def bound(self) -> Array:
        """The NELBO in nats, without the penalty."""
        return self.diff + self.rec + self.prior

    @property
    def total(self) -> Array:
        return self.bound + self.curvature


class BridgeTerms(NamedTuple):
    """Per-example NFBM terms, each ``[B]``: diffusion and reconstruction (nats), obstacle."""

    diff: Array
    rec: Array
    obstacle: Array

    @property
    def bound(self) -> Array:
        """The conditional NELBO in nats, without the obstacle penalty."""
        return self.diff + self.rec

    @property
    def total(self) -> Array:
        return self.bound + self.obstacle


def stratified_times(key: Array, n: int) -> Array:
    """t_i = (u + i / n) mod 1 with one u ~ U[0, 1); shape ``[n]``.

    Stratifying over the *global* batch (VDM) lowers the variance of the t-integral.
    """
    u = jax.random.uniform(key, ())
    return jnp.mod(u + jnp.arange(n) / n, 1.0)


def sample_t_eps(key: Array, x: Array) -> tuple[Array, Array]:
    """Stratified times ``[B]`` and standard normal noise shaped like ``x``."""
    kt, ke = jax.random.split(key)
    return stratified_times(kt, x.shape[0]), jax.random.normal(ke, x.shape, x.dtype)


def sample_z(m: Marginal, eps: Array) -> Array:
    """z = μ + σ ⊙ ε."""
    return m.mu + m.sigma * eps


def _diffusion(forward: ForwardFn, predictor: Predictor, volatility: Volatility,
               x: Array, t: Array, eps: Array) -> tuple[Array, Marginal, Array, Marginal]:
    """:func:`diffusion_loss` ``[B]``, the forward marginal at (x, t), the sample z_t
    ``[B, *D]`` it was evaluated at and the marginal at the prediction x̂(z_t, t)."""
    chex.assert_equal_shape([x, eps])
    chex.assert_shape(t, (x.shape[0],))
    m = marginal_and_velocity(forward, x, t)
    z = sample_z(m, eps)
    m_hat = marginal_and_velocity(forward, predictor(z, t), t)
    g2 = volatility(t)
    diff = reverse_drift_difference(m, m_hat, z, g2)
    return sum_per_example(jnp.square(diff)) / (2.0 * g2), m, z, m_hat


def diffusion_loss(forward: ForwardFn, predictor: Predictor, volatility: Volatility,
                   x: Array, t: Array, eps: Array) -> Array:
    """L_diff integrand at (t, ε): ‖f^B(z_t, t, x) − f̂(z_t, t)‖² / (2 g²), nats ``[B]``.

    An unbiased one-sample estimate of L_diff when t ~ U[0, 1] (or stratified).

    Args:
      forward: ``forward(x, t) -> (mu, log_sigma)``.
      predictor: ``predictor(z, t) -> x_hat``.
      volatility: ``volatility(t) -> g2``; must be positive.
      x: data ``[B, *D]``; t: ``[B]``; eps: noise ``[B, *D]``.
    """
    return _diffusion(forward, predictor, volatility, x, t, eps)[0]


def prior_loss(forward: ForwardFn, x: Array) -> Array:
    """KL(q(z_1 | x) ‖ N(0, I)) in nats ``[B]``.

    Exactly 0 without running the network for processes pinned to N(0, I) at t = 1
    (:func:`nfdm_jax.forward.pinned_ends`).
    """
    ends = pinned_ends(forward)
    if ends is not None and ends.standard_at_one:
        return jnp.zeros((x.shape[0],), x.dtype)
    mu, log_sigma = forward(x, jnp.ones((x.shape[0],), x.dtype))
    kl = 0.5 * (jnp.square(mu) + jnp.exp(2.0 * log_sigma) - 1.0) - log_sigma
    return sum_per_example(kl)


def reconstruction_loss(forward: ForwardFn, decoder_nll: DecoderNLL,
                        x: Array, eps: Array) -> Array:
    """E_{q(z_0 | x)} −log p(x | z_0), one sample z_0 = μ_0 + σ_0 ε; nats ``[B]``.

    Processes pinned at t = 0 (:func:`nfdm_jax.forward.pinned_ends`) have μ_0 = x and a
    known σ_0, so the network is not run there.
    """
    ends = pinned_ends(forward)
    if ends is not None:
        return decoder_nll(x + math.exp(ends.log_sigma0) * eps, x)
    mu, log_sigma = forward(x, jnp.zeros((x.shape[0],), x.dtype))
    return decoder_nll(mu + jnp.exp(log_sigma) * eps, x)


def nelbo_terms(forward: ForwardFn, predictor: Predictor, volatility: Volatility,
                x: Array, t: Array, eps: Array, *, decoder_nll: DecoderNLL) -> NELBOTerms:
    """All NELBO terms at given times ``t`` ``[B]`` and noise ``eps`` ``[B, *D]``."""
    diff = _diffusion(forward, predictor, volatility, x, t, eps)[0]
    return NELBOTerms(diff=diff, rec=reconstruction_loss(forward, decoder_nll, x, eps),
                      prior=prior_loss(forward, x))


def nelbo(forward: ForwardFn, predictor: Predictor, volatility: Volatility,
          x: Array, key: Array, *, decoder_nll: DecoderNLL) -> NELBOTerms:
    """Simulation-free NELBO of SPEC §1.3 with t stratified over the batch; nats ``[B]``.

    ``x`` should be the global batch (under ``jit`` with sharded inputs it is), so the
    strata cover the whole batch.
    """
    t, eps = sample_t_eps(key, x)
    return nelbo_terms(forward, predictor, volatility, x, t, eps, decoder_nll=decoder_nll)


def bits_per_dim(nats: Array, dim: int, log_jacobian_per_dim: float = 0.0) -> Array:
    """Nats per example → bits per dimension, adding a per-dimension log-Jacobian in nats.

    Use ``decoders.log_jacobian_per_dim(convention)`` for the Jacobian of the
    data rescaling (``log 128`` for dequantized 8-bit images in [−1, 1]).
    """
    return (nats / dim + log_jacobian_per_dim) / math.log(2.0)


def ode_acceleration(forward: ForwardFn, predictor: Predictor, z: Array, t: Array,
                     velocity: Optional[Array] = None) -> Array:
    """d²z/dt² of the probability-flow ODE dz/dt = f̂(z, t) = f(z, t, x̂(z, t)) at (z, t).

    The acceleration of an ODE solution through (z, t) is ∂_t f̂ + (∇_z f̂) f̂: one
    ``jax.jvp`` of (z, t) ↦ f̂ with tangent (f̂, 1). f̂ holds its own jvp of the forward
    process at x̂, so this is nested forward mode (SPEC §1.4).

    Args:
      forward: ``forward(x, t) -> (mu, log_sigma)``; predictor: ``predictor(z, t) -> x_hat``.
      z: states ``[B, *D]``; t: times ``[B]``.
      velocity: f̂(z, t) ``[B, *D]`` if already computed (it is the jvp's tangent).

    Returns:
      ``[B, *D]``.
    """
    drift = generative_drift(forward, predictor, zero_volatility())
    if velocity is None:
        velocity = drift(z, t)
    return jax.jvp(drift, (z, t), (velocity, jnp.ones_like(t)))[1]


def nfdm_ot_terms(forward: ForwardFn, predictor: Predictor, volatility: Volatility,
                  x: Array, t: Array, eps: Array, *, decoder_nll: DecoderNLL,
                  curvature_weight: float) -> OTTerms:
    """NFDM-OT (SPEC §1.4): NFDM's NELBO terms plus λ ‖σ_t ⊙ d²z/dt²‖² of its ODE, ``[B]``.

    The NELBO (learned g) anchors the forward process; the penalty is the squared
    acceleration (:func:`ode_acceleration`) of the generative ODE's solution through the
    NELBO's own sample z_t ~ q(z_t | x), whose velocity f̂(z_t, t) is read off the
    NELBO's marginal at x̂ (no extra network call for the tangent). Skipped when λ = 0.

    The acceleration is measured in units of the noise, σ(x, t) ⊙ a (σ under a
    stop-gradient, so that shrinking σ is not a way to pay less). On the straight path
    z_t = (1 − t) x + (t + (1 − t) δ) ε, σ_t a = −d x̂ / dt along the ODE: the unweighted ‖a‖²
    carries a factor 1/σ² (10⁶ at t = 0 for δ = 1e-3) that puts the penalty's mass where the
    path has no length left and the NELBO asks x̂ to remove the last noise. The
    weighted form did better at every NFE and in the bound on the 2-D ring and the digits
    (``reports/few_step``). The penalty's gradient reaches both networks.
    """
    diff, m, z, m_hat = _diffusion(forward, predictor, volatility, x, t, eps)
    rec, prior = reconstruction_loss(forward, decoder_nll, x, eps), prior_loss(forward, x)
    if curvature_weight == 0.0:
        return OTTerms(diff, rec, prior, jnp.zeros_like(diff))
    accel = ode_acceleration(forward, predictor, z, t, ode_drift(m_hat, z))
    scaled = jax.lax.stop_gradient(m.sigma) * accel
    return OTTerms(diff, rec, prior, curvature_weight * sum_per_example(jnp.square(scaled)))


def disc_obstacle(centre: Array, radius: float) -> Callable[[Array], Array]:
    """c(z) = relu(r − ‖z − centre‖): positive inside the disc; ``[B, D] -> [B]``."""
    centre = jnp.reshape(jnp.asarray(centre), (1, -1))
    return lambda z: jax.nn.relu(radius - jnp.linalg.norm(z - centre, axis=-1))


def nfbm_loss(bridge: Callable[[Array, Array, Array], tuple[Array, Array]],
              predictor: Callable[[Array, Array, Array], Array], volatility: Volatility,
              x0: Array, x1: Array, t: Array, eps: Array, *, decoder_nll: DecoderNLL,
              obstacle: Optional[Callable[[Array], Array]] = None,
              obstacle_weight: float = 0.0) -> BridgeTerms:
    """NFBM objective (SPEC §1.5): L_diff + L_rec + λ_obs E c(z_t), per example ``[B]``.

    Args:
      bridge: ``bridge(x0, x1, t) -> (mu, log_sigma)``, pinned at x0 (t = 0) and x1 (t = 1).
      predictor: ``predictor(z, t, x1) -> x0_hat``.
      x0: target samples ``[B, *D]``; x1: source samples ``[B, *D]``, drawn independently.
      obstacle: ``c(z_t) -> [B]``, e.g. :func:`disc_obstacle`, evaluated on forward samples.
    """
    # Closing over x1 keeps the bridge's pinned ends (closed-form L_rec at t = 0).
    forward = with_pinned_ends(lambda x, tt: bridge(x, x1, tt), pinned_ends(bridge))
    pred = lambda z, tt: predictor(z, tt, x1)  # noqa: E731
    diff, _, z, _ = _diffusion(forward, pred, volatility, x0, t, eps)
    rec = reconstruction_loss(forward, decoder_nll, x0, eps)
    if obstacle is None or obstacle_weight == 0.0:
        return BridgeTerms(diff, rec, jnp.zeros_like(diff))
    # The obstacle sits at the z_t of L_diff: no second forward pass.
    return BridgeTerms(diff, rec, obstacle_weight * obstacle(z))
