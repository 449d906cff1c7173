"""Samplers against a Gaussian oracle: data N(m, S) under a VP process with the exact
posterior-mean predictor, for which the probability-flow map and the marginals are known.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nfdm_jax import drifts, forward, sampling, volatility


def exact_flow_map(z1, t_end, oracle):
    """Probability-flow ODE from t = 1 to t_end: each eigen-coordinate is scaled by √(v_t / v_1)."""
    a2_1, s2_1 = oracle.alpha2_sigma2(jnp.ones(()))
    a2_t, s2_t = oracle.alpha2_sigma2(jnp.full((), t_end))
    scale = jnp.sqrt((a2_t * oracle.eigs + s2_t) / (a2_1 * oracle.eigs + s2_1))
    q, mean = oracle.q, oracle.mean
    return jnp.sqrt(a2_t) * mean + ((z1 - jnp.sqrt(a2_1) * mean) @ q * scale) @ q.T


@pytest.fixture(scope="module")
def model(x64, oracle):
    fwd = forward.vp_forward(oracle.gamma)
    vol = volatility.vp_matching(oracle.gamma)
    return dict(ode=drifts.generative_drift(fwd, oracle.exact_predictor, volatility.zero()),
                sde=drifts.generative_drift(fwd, oracle.exact_predictor, vol), vol=vol)


@pytest.fixture(scope="module")
def z1(x64):
    return sampling.sample_prior(jax.random.key(0), (16, 3), jnp.float64)


def max_err(a, b):
    return float(jnp.max(jnp.abs(a - b)))


def test_sample_prior_shape_and_dtype():
    z = sampling.sample_prior(jax.random.key(0), (4, 2, 3))
    assert z.shape == (4, 2, 3) and z.dtype == jnp.float32


def test_time_grid():
    ts = sampling.time_grid(4, t_end=0.2)
    np.testing.assert_allclose(ts, [1.0, 0.8, 0.6, 0.4, 0.2], atol=1e-7)
    # ρ = 2: t_i = (1 − i/4)², steps shrinking towards the data end.
    np.testing.assert_allclose(sampling.time_grid(4, rho=2.0), [1.0, 0.5625, 0.25, 0.0625, 0.0],
                               atol=1e-7)
    for bad in ({"num_steps": 0}, {"num_steps": 3, "rho": 0.0}):
        with pytest.raises(ValueError):
            sampling.time_grid(**bad)


@pytest.mark.parametrize("method,nfe", [("euler", 8), ("heun", 33)])
def test_a_grid_dense_near_the_data_follows_a_flow_that_bends_there(x64, method, nfe):
    """Narrow Gaussian data N(m, s² I), s = 0.05, on the straight path σ = t + (1 − t) δ with
    its exact posterior mean: the flow contracts z_1 onto the data only where σ_t ≈ (1 − t) s,
    near t = 0, and there ρ = 2 follows the exact map m + √(s² + δ²) z_1 more closely than
    the uniform grid (measured: Euler 8 0.066 → 0.027, Heun 33 0.034 → 0.0026)."""
    m, s, delta = jnp.array([[0.5, -0.3]]), 0.05, 0.01

    def posterior_mean(z, t):
        a, sig = (1.0 - t)[:, None], (t + (1.0 - t) * delta)[:, None]
        return m + a * s ** 2 / (a ** 2 * s ** 2 + sig ** 2) * (z - a * m)

    ode = drifts.generative_drift(forward.straight_forward(delta), posterior_mean,
                                  volatility.zero())
    z1 = sampling.sample_prior(jax.random.key(0), (16, 2), jnp.float64)
    exact = m + jnp.sqrt(s ** 2 + delta ** 2) * z1
    err = {rho: max_err(sampling.ode_sample(ode, z1, nfe=nfe, method=method, rho=rho), exact)
           for rho in (1.0, 2.0)}
    assert err[2.0] < 0.5 * err[1.0], err


def test_ode_samplers_follow_exact_flow_map(model, z1, oracle):
    exact = exact_flow_map(z1, 0.0, oracle)
    heun = jax.jit(lambda z: sampling.ode_sample(model["ode"], z, nfe=79))(z1)
    euler = jax.jit(lambda z: sampling.ode_sample(model["ode"], z, nfe=400, method="euler"))(z1)
    adaptive = jax.jit(lambda z: sampling.adaptive_sample(
        model["ode"], z, rtol=1e-8, atol=1e-8).y)(z1)
    # Measured: Heun 5.0e-4, Euler 2.0e-3, Tsit5 at 1e-8 2.6e-9 (217 NFE).
    assert max_err(heun, exact) < 1e-3
    assert max_err(euler, exact) < 5e-3
    assert max_err(adaptive, exact) < 1e-6


def test_adaptive_sample_to_intermediate_time_with_trajectory(model, z1, oracle):
    save_ts = jnp.array([1.0, 0.7, 0.3])
    sol = sampling.adaptive_sample(model["ode"], z1, solver="dopri5", rtol=1e-8, atol=1e-8,
                                   t_end=0.3, save_ts=save_ts)
    assert max_err(sol.y, exact_flow_map(z1, 0.3, oracle)) < 1e-6
    assert sol.trajectory.zs.shape == (3, 16, 3)
    for t, z in zip(save_ts, sol.trajectory.zs):
        assert max_err(z, exact_flow_map(z1, float(t), oracle)) < 1e-6


def test_convergence_orders(model, z1, oracle):
    """Halving the step divides the error by ~2 (Euler) and ~4 (Heun)."""
    exact = exact_flow_map(z1, 0.0, oracle)

    def errors(method, steps):
        return [max_err(method(model["ode"], z1, num_steps=n, final_euler=False)
                        if method is sampling.heun else method(model["ode"], z1, num_steps=n),
                        exact) for n in steps]

    e_heun = errors(sampling.heun, (20, 40))
    e_euler = errors(sampling.euler, (50, 100))
    assert 3.0 < e_heun[0] / e_heun[1] < 5.5, e_heun
    assert 1.6 < e_euler[0] / e_euler[1] < 2.4, e_euler


def counting(drift):
    """The drift, plus a host counter of its evaluations at run time."""
    calls = []

    def counted(z, t):
        jax.debug.callback(lambda: calls.append(1))
        return drift(z, t)

    return counted, calls


@pytest.mark.parametrize("run, expected", [
    (lambda f, v, z: sampling.euler(f, z, num_steps=7), 7),
    (lambda f, v, z: sampling.heun(f, z, num_steps=5), 9),
    (lambda f, v, z: sampling.heun(f, z, num_steps=5, final_euler=False), 10),
    (lambda f, v, z: sampling.heun(f, z, num_steps=1), 1),
    (lambda f, v, z: sampling.ode_sample(f, z, nfe=8), 8),
    (lambda f, v, z: sampling.ode_sample(f, z, nfe=11), 11),
    (lambda f, v, z: sampling.ode_sample(f, z, nfe=6, method="euler", rho=3.0), 6),
    (lambda f, v, z: sampling.ode_sample(f, z, nfe=7, rho=2.0), 7),
    (lambda f, v, z: sampling.euler_maruyama(f, v, z, jax.random.key(1), num_steps=6), 6),
])
def test_nfe_is_counted_honestly(model, z1, run, expected):
    drift, calls = counting(model["ode"])
    jax.block_until_ready(run(drift, model["vol"], z1))
    jax.effects_barrier()
    assert len(calls) == expected
    assert sampling.heun_nfe(5) == 9 and sampling.heun_nfe(5, final_euler=False) == 10


def test_adaptive_nfe_matches_counted_evaluations(model, z1):
    drift, calls = counting(model["ode"])
    sol = sampling.adaptive_sample(drift, z1, rtol=1e-6, atol=1e-6)
    jax.effects_barrier()
    assert int(sol.nfe) == len(calls) and int(sol.num_steps) > 0


def test_stochastic_and_deterministic_samples_match_data_moments(model, oracle):
    """Started from the exact q(z_1) (with γ_max = 5 it is not quite N(0, I): α_1 = 0.08),
    both samplers must land on q(z_0). N = 40000: Monte Carlo standard errors are
    ≤ 0.005 (mean) and ≤ 0.007 (covariance); tolerances are about 4 of them."""
    key_prior, key_noise = jax.random.split(jax.random.key(2))
    mean1, cov1 = oracle.marginal(1.0)
    noise = sampling.sample_prior(key_prior, (40_000, 3), jnp.float64)
    z = mean1[None] + noise @ np.linalg.cholesky(cov1).T
    em = jax.jit(lambda z, k: sampling.euler_maruyama(
        model["sde"], model["vol"], z, k, num_steps=500))(z, key_noise)
    heun = jax.jit(lambda z: sampling.ode_sample(model["ode"], z, nfe=49))(z)
    mean, cov = oracle.marginal(0.0)
    for samples in (np.asarray(em), np.asarray(heun)):
        np.testing.assert_allclose(samples.mean(axis=0), mean, atol=0.02)
        np.testing.assert_allclose(np.cov(samples, rowvar=False), cov, atol=0.03)


def test_trajectories_start_and_end_where_the_sampler_does(model, z1):
    key = jax.random.key(3)
    runs = [
        (lambda **kw: sampling.euler(model["ode"], z1, num_steps=4, **kw), 5),
        (lambda **kw: sampling.heun(model["ode"], z1, num_steps=4, **kw), 5),
        (lambda **kw: sampling.euler_maruyama(model["sde"], model["vol"], z1, key,
                                              num_steps=4, **kw), 5),
    ]
    for run, length in runs:
        traj = run(return_trajectory=True)
        assert traj.zs.shape == (length, 16, 3)
        np.testing.assert_allclose(traj.ts, np.linspace(1.0, 0.0, length), atol=1e-12)
        np.testing.assert_array_equal(traj.zs[0], z1)
        np.testing.assert_allclose(traj.zs[-1], run(), atol=1e-12)


def test_sampling_under_a_sharded_batch(model, z1):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    z_sharded = jax.device_put(z1, sharding)
    sample = jax.jit(lambda z: sampling.ode_sample(model["ode"], z, nfe=9))
    out = sample(z_sharded)
    assert out.sharding.is_equivalent_to(sharding, out.ndim)
    np.testing.assert_allclose(out, sample(z1), atol=1e-12)


def test_bridge_sampler_goes_from_source_to_target(x64):
    """A bridge whose target is a point mass at a: the exact predictor is x̂ = a, and the
    deterministic bridge carries any source point x1 onto a (up to σ_0 = δ times 0)."""
    target = jnp.array([[1.5, -2.0]])
    bridge = forward.bridge_forward(lambda x0, x1, t: (jnp.zeros_like(x0), jnp.zeros_like(x0)))
    predictor = lambda z, t, x1: jnp.broadcast_to(target, z.shape)  # noqa: E731
    x1 = jax.random.normal(jax.random.key(4), (8, 2), jnp.float64)
    drift = sampling.bridge_generative_drift(bridge, predictor, volatility.zero(), x1)
    z0 = sampling.ode_sample(drift, x1, nfe=39)
    assert max_err(z0, jnp.broadcast_to(target, z0.shape)) < 1e-3
