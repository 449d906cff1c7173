"""Exact log-likelihood of a deterministic model by the instantaneous change of variables.

For the ODE dz/dt = v(z, t) whose marginal density p_t is transported from
p_1 = N(0, I) at t = 1 to p_0 at t = 0, the density along a solution obeys
d log p_t(z_t)/dt = −div v(z_t, t). Integrating from t0 to t1,

    log p_{t0}(z_{t0}) = log p_{t1}(z_{t1}) + ∫_{t0}^{t1} div v(z_t, t) dt,

so the solve runs *forwards* in time, from the data end (t0 = 0) to the noise end,
on the augmented state (z, ∫ div v dt) with a diffrax adaptive solver.

The model's ODE is v = ``drifts.generative_drift(forward, predictor, volatility.zero())``
(NFDM-OT's own dynamics; for an NFDM model, the deterministic sampler's ODE).

Which density is evaluated: p_0 is the model's density of z_0, a continuous density on
R^D. :func:`data_log_likelihood` evaluates it at the data itself (``delta = 0``, as
Flow Matching does) or at z_0 ~ q(z_0 | x) = N(x, δ² I) (``delta = δ``): then
log p_0(z_0) is a one-sample variational lower bound on log p(x) for the decoder
p(x | z_0) = N(x; z_0, δ² I), because that decoder and q(z_0 | x) cancel exactly.

Divergence: exact (D forward-mode passes, for small D) or Hutchinson's estimator
with one probe per example held fixed over the solve (an unbiased estimate of
log p_{t0}, whose variance shrinks with D for image models). Both assume, as the
rest of the library does, that each example's drift depends on its own z and t only.
"""
from __future__ import annotations

import math
from typing import Callable, Literal, Optional

import jax
import jax.numpy as jnp

from nfdm_jax.decoders import dequantized, log_jacobian_per_dim
from nfdm_jax.drifts import Drift
from nfdm_jax.losses import bits_per_dim
from nfdm_jax.ops import sum_per_example
from nfdm_jax.sampling import Solver, odeint

Array = jax.Array
Trace = Literal["exact", "hutchinson"]
Probe = Literal["rademacher", "gaussian"]


def standard_normal_log_prob(z: Array) -> Array:
    """log N(z; 0, I) per example: ``[B, *D] -> [B]`` nats."""
    dim = math.prod(z.shape[1:])
    return -0.5 * sum_per_example(jnp.square(z)) - 0.5 * dim * math.log(2.0 * math.pi)


def exact_divergence(drift: Drift, z: Array, t: Array) -> Array:
    """tr(∂v/∂z) per example ``[B]``, by one jvp per data dimension.

    Linearises once and pushes every one-hot direction (the same for all examples)
    through; memory is D copies of the batch, so use it for small D only.

    Args:
      drift: ``drift(z, t) -> v`` ``[B, *D]``; example i must depend on z_i only.
      z: ``[B, *D]``; t: ``[B]``.
    """
    _, jvp = jax.linearize(lambda zz: drift(zz, t), z)
    dim = math.prod(z.shape[1:])

    def diagonal_entry(d: Array) -> Array:
        e = jnp.broadcast_to(jax.nn.one_hot(d, dim, dtype=z.dtype).reshape(z.shape[1:]),
                             z.shape)
        return sum_per_example(e * jvp(e))

    return jnp.sum(jax.vmap(diagonal_entry)(jnp.arange(dim)), axis=0)


def hutchinson_divergence(drift: Drift, z: Array, t: Array, probe: Array) -> Array:
    """Hutchinson's estimate εᵀ (∂v/∂z) ε per example ``[B]``, by one jvp.

    Forward mode costs about one drift evaluation and stores no residuals (a vjp
    would give the same number at higher memory). Unbiased when the probe ε has
    identity covariance (:func:`sample_probe`).
    """
    _, jac_probe = jax.jvp(lambda zz: drift(zz, t), (z,), (probe,))
    return sum_per_example(probe * jac_probe)


def sample_probe(key: Array, shape: tuple[int, ...], kind: Probe = "rademacher",
                 dtype: jnp.dtype = jnp.float32) -> Array:
    """A Hutchinson probe with E[ε εᵀ] = I: Rademacher (±1, lower variance) or Gaussian."""
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype)
    raise ValueError(f"Unknown probe {kind!r}; use 'rademacher' or 'gaussian'.")


def ode_log_likelihood(drift: Drift, z: Array, key: Optional[Array] = None, *,
                       trace: Trace = "exact", probe: Probe = "rademacher",
                       t0: float = 0.0, t1: float = 1.0,
                       prior_log_prob: Callable[[Array], Array] = standard_normal_log_prob,
                       solver: Solver = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                       max_steps: int = 4096) -> Array:
    """log p_{t0}(z) per example ``[B]`` in nats, through the ODE dz/dt = drift(z, t).

    Solves the augmented system d(z, Δ)/dt = (v, div v) from ``t0`` (z given) to ``t1``
    and returns ``prior_log_prob(z_{t1}) + Δ(t1)``.

    Args:
      drift: ``drift(z, t) -> dz/dt`` ``[B, *D]``, t ``[B]``.
      z: states at ``t0`` ``[B, *D]`` (use float64 for tight tolerances).
      key: PRNG key for the Hutchinson probe; unused (may be None) for ``"exact"``.
      trace: ``"exact"`` (D jvps per evaluation) or ``"hutchinson"`` (one).
      probe: Hutchinson probe distribution, fixed over the solve.
      t0, t1: start (data side) and end (noise side) of the solve, ``t0 < t1``.
      prior_log_prob: log density at ``t1``, ``[B, *D] -> [B]``; N(0, I) by default.
      solver, rtol, atol, max_steps: see :func:`nfdm_jax.sampling.odeint`; the error
        control covers Δ too, and one step size is shared by the batch.
    """
    if trace == "exact":
        divergence = lambda zz, tt: exact_divergence(drift, zz, tt)  # noqa: E731
    elif trace == "hutchinson":
        if key is None:
            raise ValueError("trace='hutchinson' needs a PRNG key for the probe.")
        eps = sample_probe(key, z.shape, probe, z.dtype)
        divergence = lambda zz, tt: hutchinson_divergence(drift, zz, tt, eps)  # noqa: E731
    else:
        raise ValueError(f"Unknown trace {trace!r}; use 'exact' or 'hutchinson'.")

    def vector_field(t: Array, state: tuple[Array, Array]) -> tuple[Array, Array]:
        zz, _ = state
        tt = jnp.full((zz.shape[0],), t, zz.dtype)
        return drift(zz, tt), divergence(zz, tt)

    delta0 = jnp.zeros((z.shape[0],), z.dtype)
    sol = odeint(vector_field, (z, delta0), t0=t0, t1=t1, solver=solver,
                 rtol=rtol, atol=atol, max_steps=max_steps)
    z_end, delta = sol.y
    return prior_log_prob(z_end) + delta


def data_log_likelihood(drift: Drift, x: Array, key: Array, *, delta: float = 0.0,
                        **kwargs) -> Array:
    """log p_0(z_0) per example ``[B]`` (nats) with z_0 = x (``delta = 0``) or x + δε.

    With ``delta > 0`` this is a one-sample lower bound on log p(x) under the
    Gaussian decoder N(x; z_0, δ² I): log p(x) ≥ E_{q(z_0|x)}[log p_0(z_0)
    + log N(x; z_0, δ²) − log N(z_0; x, δ²)], and the last two terms cancel.
    ``kwargs`` go to :func:`ode_log_likelihood`.
    """
    k_noise, k_probe = jax.random.split(key)
    z0 = x + delta * jax.random.normal(k_noise, x.shape, x.dtype) if delta > 0.0 else x
    return ode_log_likelihood(drift, z0, k_probe, **kwargs)


def dequantized_bpd(drift: Drift, pixels: Array, key: Array, *, delta: float = 0.0,
                    **kwargs) -> Array:
    """Bits per dimension ``[B]`` of 8-bit images under the ``"dequantized"`` convention.

    x̃ = 2(k + u)/256 − 1, u ~ U[0, 1)^D (``decoders.dequantized``); the BPD is
    (−log p(x̃)/D + log 128)/log 2, an upper bound on the discrete BPD in expectation
    over u (and over z_0 for ``delta > 0``). Average over the test set for the number.

    Args:
      drift: the model's ODE drift.
      pixels: integer images ``[B, H, W, C]`` in {0..255}.
      key: PRNG key (dequantization noise, z_0 noise, Hutchinson probe).
      delta: see :func:`data_log_likelihood`.
      kwargs: to :func:`ode_log_likelihood` (trace, rtol, atol, ...).
    """
    k_deq, k_ll = jax.random.split(key)
    x = dequantized(k_deq, pixels)
    log_p = data_log_likelihood(drift, x, k_ll, delta=delta, **kwargs)
    dim = math.prod(pixels.shape[1:])
    return bits_per_dim(-log_p, dim, log_jacobian_per_dim("dequantized"))
