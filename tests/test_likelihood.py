"""ODE likelihoods and the NELBO against a Gaussian oracle.

Data x ~ N(m, S) (D = 3, non-isotropic), a VP process with the linear log-SNR schedule,
and the exact posterior-mean predictor. Then z_t ~ N(α_t m, α_t² S + σ_t² I), and
f(z, t, x̂(z, t)) is the exact probability-flow drift of these marginals.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfdm_jax import decoders, drifts, forward, likelihood, losses, volatility


def gaussian_log_prob(z, mean, cov):
    """log N(z; mean, cov) per row, ``z`` [B, D], in float64 NumPy-free jnp."""
    chol = jnp.linalg.cholesky(cov)
    white = jax.scipy.linalg.solve_triangular(chol, (z - mean[None]).T, lower=True)
    return (-0.5 * jnp.sum(jnp.square(white), axis=0) - jnp.sum(jnp.log(jnp.diag(chol)))
            - 0.5 * z.shape[1] * math.log(2 * math.pi))


@pytest.fixture(scope="module")
def ode_drift(x64, oracle):
    return drifts.generative_drift(forward.vp_forward(oracle.gamma), oracle.exact_predictor,
                                   volatility.zero())


@pytest.fixture(scope="module")
def points(x64, oracle):
    """Points spread like the data end, [8, D]."""
    mean, cov = oracle.marginal(0.0)
    noise = jax.random.normal(jax.random.key(0), (8, oracle.dim), jnp.float64)
    return mean[None] + noise @ jnp.linalg.cholesky(cov).T


@pytest.fixture(scope="module")
def true_prior(oracle):
    """The exact q(z_1): with γ_max = 5 it differs from N(0, I) (α_1 = 0.08)."""
    return lambda z: gaussian_log_prob(z, *oracle.marginal(1.0))


@pytest.mark.parametrize("solver", ["dopri5", "tsit5"])
def test_ode_likelihood_matches_closed_form(ode_drift, points, solver, oracle, true_prior):
    log_p = jax.jit(lambda z: likelihood.ode_log_likelihood(
        ode_drift, z, solver=solver, rtol=1e-6, atol=1e-6, prior_log_prob=true_prior))(points)
    expected = gaussian_log_prob(points, *oracle.marginal(0.0))
    # Measured error: ~1e-6 nats per dimension.
    assert float(jnp.max(jnp.abs(log_p - expected))) / oracle.dim < 1e-3


def test_ode_likelihood_from_intermediate_time(ode_drift, points, oracle):
    log_p = likelihood.ode_log_likelihood(ode_drift, points, t0=0.4, t1=0.9, rtol=1e-6,
                                          atol=1e-6,
                                          prior_log_prob=lambda z: gaussian_log_prob(
                                              z, *oracle.marginal(0.9)))
    expected = gaussian_log_prob(points, *oracle.marginal(0.4))
    assert float(jnp.max(jnp.abs(log_p - expected))) / oracle.dim < 1e-3


def test_exact_divergence_is_the_jacobian_trace(x64, oracle):
    """Against a per-example jacfwd trace, for a nonlinear drift that mixes dimensions."""
    w = jax.random.normal(jax.random.key(1), (oracle.dim, oracle.dim), jnp.float64)
    drift = lambda z, t: jnp.tanh(z @ w) * (1.0 + t[:, None]) + jnp.square(z)  # noqa: E731
    z = jax.random.normal(jax.random.key(2), (5, oracle.dim), jnp.float64)
    t = jnp.linspace(0.1, 0.9, 5)
    per_example = jax.vmap(lambda zi, ti: jnp.trace(
        jax.jacfwd(lambda zz: drift(zz[None], ti[None])[0])(zi)))(z, t)
    np.testing.assert_allclose(likelihood.exact_divergence(drift, z, t), per_example, rtol=1e-12)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_divergence_is_unbiased(ode_drift, points, probe, oracle):
    """Mean of 20000 one-probe estimates at one (z, t) within 5 standard errors of the trace."""
    n = 20_000
    z = jnp.broadcast_to(points[:1], (n, oracle.dim))
    t = jnp.full((n,), 0.8)  # where S makes the Jacobian far from isotropic
    eps = likelihood.sample_probe(jax.random.key(3), z.shape, probe, z.dtype)
    estimates = likelihood.hutchinson_divergence(ode_drift, z, t, eps)
    exact = likelihood.exact_divergence(ode_drift, z[:1], t[:1])[0]
    stderr = float(jnp.std(estimates)) / math.sqrt(n)
    assert stderr > 1e-3  # the Jacobian is not diagonal: a single probe is noisy
    assert abs(float(jnp.mean(estimates)) - float(exact)) < 5 * stderr


def test_hutchinson_log_likelihood_agrees_on_average(ode_drift, points, oracle, true_prior):
    """256 probes of one point: the mean estimate is within 5 SE of the exact value."""
    n = 256
    z = jnp.broadcast_to(points[:1], (n, oracle.dim))
    log_p = jax.jit(lambda z, k: likelihood.ode_log_likelihood(
        ode_drift, z, k, trace="hutchinson", rtol=1e-6, atol=1e-6,
        prior_log_prob=true_prior))(z, jax.random.key(4))
    exact = gaussian_log_prob(points[:1], *oracle.marginal(0.0))[0]
    stderr = float(jnp.std(log_p)) / math.sqrt(n)
    assert 0.0 < stderr < 0.2  # measured 0.044
    assert abs(float(jnp.mean(log_p)) - float(exact)) < 5 * stderr


def test_hutchinson_needs_a_key(ode_drift, points):
    with pytest.raises(ValueError, match="PRNG key"):
        likelihood.ode_log_likelihood(ode_drift, points, trace="hutchinson")


def test_nelbo_bounds_and_nearly_equals_the_exact_nll(x64, oracle):
    """The NELBO with the Gaussian decoder p(x | z_0) = N(x; z_0, σ_0² I) bounds −log p(x),
    p(x) = ∫ N(x; z_0, σ_0²) p_0(z_0) dz_0 = N(x; α_0 m, α_0² S + 2σ_0² I) (p_0 = q(z_0);
    the prior N(0, I) ≠ q(z_1) changes this by O(KL(q(z_1) ‖ N(0, I))) ≈ 1e-3 nats).
    With the exact predictor and VP-matching g the bound is tight (SPEC §1.3), so on
    average over x, t, ε:  −4 SE < NELBO − NLL < 4 SE + 0.05 nats.
    """
    n = 1_000_000
    mean, cov = oracle.marginal(0.0)
    x_mean, x_cov = oracle.mean[0], (oracle.q * oracle.eigs) @ oracle.q.T
    x = x_mean[None] + jax.random.normal(jax.random.key(5), (n, oracle.dim), jnp.float64) @ \
        jnp.linalg.cholesky(x_cov).T
    sigma0 = float(jnp.sqrt(oracle.alpha2_sigma2(jnp.zeros(()))[1]))
    terms = jax.jit(lambda x, k: losses.nelbo(
        forward.vp_forward(oracle.gamma), oracle.exact_predictor,
        volatility.vp_matching(oracle.gamma), x, k,
        decoder_nll=decoders.gaussian_nll(sigma0)))(x, jax.random.key(6))
    nll = -gaussian_log_prob(x, mean, cov + sigma0 ** 2 * jnp.eye(oracle.dim))
    gap = terms.total - nll
    stderr = float(jnp.std(gap)) / math.sqrt(n)
    assert -4 * stderr < float(jnp.mean(gap)) < 4 * stderr + 0.05, (float(jnp.mean(gap)), stderr)


def test_dequantized_bpd_adds_the_jacobian(x64):
    """Zero drift: p_0 = N(0, I), so BPD = (−log N(x̃; 0, I)/D + log 128)/log 2 exactly."""
    pixels = jax.random.randint(jax.random.key(7), (4, 2, 2, 3), 0, 256).astype(jnp.uint8)
    key = jax.random.key(8)
    bpd = likelihood.dequantized_bpd(lambda z, t: jnp.zeros_like(z), pixels, key)
    x = decoders.dequantized(jax.random.split(key)[0], pixels)
    nats = -likelihood.standard_normal_log_prob(x)
    expected = (nats / 12 + math.log(128)) / math.log(2)
    np.testing.assert_allclose(bpd, expected, rtol=1e-6)
    assert bpd.shape == (4,)
