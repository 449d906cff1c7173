"""Scores and drifts of the forward and generative processes (SPEC §1.1–§1.2).

All functions act on a batch: ``z`` and the fields of a :class:`Marginal` are
``[B, *D]``; ``g2`` (the squared volatility) and ``t`` are ``[B]``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from nfdm_jax.forward import ForwardFn, Marginal, marginal_and_velocity, vp_forward
from nfdm_jax.ops import bcast_time
from nfdm_jax.schedules import Schedule
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


class EDMScalings(NamedTuple):
    """Coefficients of :func:`edm_preconditioned`, each ``[B, *D]``."""

    c_skip: Array
    c_out: Array
    c_in: Array
    offset: Array   # E[z_t] = offset + a m: the centring of the network's input


def edm_scalings(base: ForwardFn, z: Array, t: Array, data_mean: Array,
                 data_std: Array) -> EDMScalings:
    """EDM's c_skip, c_out, c_in for a *linear* Gaussian process z = b + a x + s ε.

    ``base`` is that process (for NFDM the untrained one: a = 1 − t, b = 0, s = δ^(1−t));
    a, b and s are read off it at x = 0 and x = 1. For data of per-channel mean m and std
    σ_d (``data_mean``, ``data_std`` broadcast against ``z``'s trailing axes),
    Var z = a² σ_d² + s², and the linear posterior mean and std of x given z are
    m + c_skip (z − b − a m) and c_out, with c_skip = a σ_d² / (a² σ_d² + s²) and
    c_out = s σ_d / √(a² σ_d² + s²); c_in = 1 / √(a² σ_d² + s²) whitens the input.
    """
    data_mean, data_std = jnp.broadcast_to(data_mean, z.shape), jnp.broadcast_to(data_std, z.shape)
    b, log_s = base(jnp.zeros_like(z), t)
    a = base(jnp.ones_like(z), t)[0] - b
    var_d = jnp.square(data_std)
    c_in = jax.lax.rsqrt(jnp.square(a) * var_d + jnp.exp(2.0 * log_s))
    return EDMScalings(c_skip=a * var_d * jnp.square(c_in),
                       c_out=jnp.exp(log_s) * data_std * c_in, c_in=c_in, offset=b + a * data_mean)


def fourier_features(x: Array, exponents: Sequence[int]) -> Array:
    """sin and cos of 2ⁿ π x for each n in ``exponents`` (VDM's input features for fine
    scales): ``[..., C] -> [..., 2 K C]``, K = ``len(exponents)``.

    With x in [−1, 1], exponent n has period 2 / 2ⁿ: n = 4 is the spacing of 17 equally
    spaced grey levels, n = 7 that of 256 (8-bit) ones. At that frequency every point of
    the lattice has the same phase, so the features tell a network how far z lies from
    it, which a plain network learns only slowly (spectral bias).
    """
    freqs = jnp.pi * 2.0 ** jnp.asarray(exponents, jnp.float32)
    h = x[..., None] * jnp.reshape(freqs, (1,) * x.ndim + (-1,))
    h = jnp.reshape(h, x.shape[:-1] + (-1,))
    return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)


def _with_features(inputs: Array, at: Array, exponents: Sequence[int]) -> Array:
    """``inputs`` with :func:`fourier_features` of ``at`` appended along channels."""
    if not exponents:
        return inputs
    return jnp.concatenate([inputs, fourier_features(at, exponents)], axis=-1)


def edm_preconditioned(net: Callable[[Array, Array], Array], base: ForwardFn,
                       data_mean: Array, data_std: Array,
                       fourier_exponents: Sequence[int] = ()) -> Predictor:
    """x̂(z, t) = m + c_skip (z − E z) + c_out net(c_in (z − E z), t) (EDM, Karras et al.).

    The scalings (:func:`edm_scalings`) come from the linear process ``base`` (for NFDM the
    untrained neural process, so that they do not move as the forward network learns) and
    the data's per-channel mean m and std σ_d: with ``net ≡ 0`` x̂ is the linear (Gaussian)
    posterior mean E[x | z_t], the network's input has unit variance, and its regression
    target (x − m − c_skip (z − E z)) / c_out has unit variance at every t for Gaussian
    data. The paper's :func:`preconditioned` starts at x̂ = (1 − t) z instead, whose error
    is weighted by up to ~10²–10⁶ in L_diff (issue #9). c_noise is t itself (the networks
    embed t). ``data_mean``, ``data_std``: ``[C]`` (or broadcastable to ``z``'s trailing axes).

    ``fourier_exponents`` appends :func:`fourier_features` of the linear posterior mean
    m + c_skip (z − E z) to the network's input (``[.., C] -> [.., C + 2 K C]``; the network
    still returns C channels): at small noise that is z rescaled to data units, so the
    features line up with the data's grey levels at every t, and at large noise it tends
    to m, so they stay bounded and smooth.
    """
    mean, std = jnp.asarray(data_mean, jnp.float32), jnp.asarray(data_std, jnp.float32)

    def predictor(z: Array, t: Array) -> Array:
        c = edm_scalings(base, z, t, mean, std)
        centred = z - c.offset
        linear = jnp.broadcast_to(mean, z.shape) + c.c_skip * centred
        inputs = _with_features(c.c_in * centred, linear, fourier_exponents)
        return linear + c.c_out * net(inputs, t)

    return predictor


def eps_predictor(net: Callable[[Array, Array], Array], gamma: Schedule,
                  fourier_exponents: Sequence[int] = ()) -> Predictor:
    """VDM's ε-parameterization for a VP process: x̂ = (z − σ_t ε̂(z, t)) / α_t.

    α_t and σ_t are those of :func:`forward.vp_forward` with schedule ``gamma``.
    ``fourier_exponents``: :func:`fourier_features` of z appended to the network's input,
    as in VDM (α_t ≈ 1 wherever the noise is small enough for them to matter).
    """
    vp = vp_forward(gamma)

    def predictor(z: Array, t: Array) -> Array:
        alpha, log_sigma = vp(jnp.ones_like(z), t)       # μ of x = 1 is α_t
        eps_hat = net(_with_features(z, z, fourier_exponents), t)
        return (z - jnp.exp(log_sigma) * eps_hat) / alpha

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
