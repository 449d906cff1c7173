"""Forward processes, schedules, volatilities, scores and drifts against independent maths."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfdm_jax import drifts, forward, schedules, volatility
from nfdm_jax.losses import prior_loss

DIM = 3


def _neural(key, core_nets):
    net = core_nets.forward_net(core_nets.init_mlp(key, [DIM + 2, 16, 2 * DIM]))
    return forward.neural_forward(net, 0.01)


def _processes(key, core_nets):
    """Every forward process as (name, forward(x, t))."""
    k1, k2, k3 = jax.random.split(key, 3)
    bridge = forward.bridge_forward(
        lambda x0, x1, t: core_nets.forward_net(
            core_nets.init_mlp(k2, [DIM + 2, 16, 2 * DIM]))(x0 + x1, t))
    x1 = jax.random.normal(k3, (4, DIM))
    return [
        ("neural", _neural(k1, core_nets)),
        ("vp_linear", forward.vp_forward(schedules.linear_gamma())),
        ("vp_cosine", forward.vp_forward(schedules.cosine_gamma())),
        ("vp_learned", forward.vp_forward(
            schedules.monotone_gamma(schedules.init_monotone_gamma(k3, hidden=8)))),
        ("straight", forward.straight_forward()),
        ("bridge", lambda x, t: bridge(x, x1, t)),
    ]


@pytest.mark.parametrize("index", range(6))
def test_jvp_time_derivatives_match_finite_differences(index, core_nets):
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(index)
        name, fwd = _processes(key, core_nets)[index]
        x = jax.random.normal(jax.random.PRNGKey(10), (4, DIM), jnp.float64)
        t = jnp.array([0.05, 0.3, 0.62, 0.93], jnp.float64)
        m = forward.marginal_and_velocity(fwd, x, t)
        h = 1e-6
        (mu_p, ls_p), (mu_m, ls_m) = fwd(x, t + h), fwd(x, t - h)
        np.testing.assert_allclose(m.dmu, (mu_p - mu_m) / (2 * h), rtol=1e-6, atol=1e-8,
                                   err_msg=name)
        np.testing.assert_allclose(m.dlog_sigma, (ls_p - ls_m) / (2 * h), rtol=1e-6,
                                   atol=1e-8, err_msg=name)
        mu, ls = fwd(x, t)
        np.testing.assert_array_equal(m.mu, mu)
        np.testing.assert_array_equal(m.log_sigma, ls)


def test_ode_drift_is_velocity_of_the_path(core_nets):
    """f(z_t, t, x) equals d/dt F(ε, t, x) for fixed ε and x."""
    with jax.enable_x64(True):
        fwd = _neural(jax.random.PRNGKey(0), core_nets)
        x = jax.random.normal(jax.random.PRNGKey(1), (4, DIM), jnp.float64)
        eps = jax.random.normal(jax.random.PRNGKey(2), (4, DIM), jnp.float64)
        t = jnp.array([0.1, 0.4, 0.5, 0.8])

        def path(tt):
            mu, ls = fwd(x, tt)
            return mu + jnp.exp(ls) * eps

        m = forward.marginal_and_velocity(fwd, x, t)
        h = 1e-6
        np.testing.assert_allclose(drifts.ode_drift(m, path(t)),
                                   (path(t + h) - path(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neural_forward_boundary_conditions(seed, core_nets):
    fwd = _neural(jax.random.PRNGKey(seed), core_nets)
    x = 3.0 * jax.random.normal(jax.random.PRNGKey(seed + 7), (5, DIM))
    mu0, ls0 = fwd(x, jnp.zeros(5))
    mu1, ls1 = fwd(x, jnp.ones(5))
    np.testing.assert_allclose(mu0, x, rtol=1e-6)
    np.testing.assert_allclose(ls0, jnp.log(0.01), rtol=1e-6)
    np.testing.assert_array_equal(mu1, 0.0)
    np.testing.assert_array_equal(ls1, 0.0)
    np.testing.assert_array_equal(prior_loss(fwd, x), 0.0)
    # In between the network does move the marginal, so the pins are not trivial.
    mu_mid, _ = fwd(x, jnp.full(5, 0.5))
    assert float(jnp.max(jnp.abs(mu_mid - 0.5 * x))) > 1e-3


def test_bridge_is_pinned_at_both_ends(core_nets):
    key = jax.random.PRNGKey(3)
    bridge = forward.bridge_forward(
        lambda x0, x1, t: core_nets.forward_net(
            core_nets.init_mlp(key, [DIM + 2, 16, 2 * DIM]))(x0 - x1, t),
        delta=0.02)
    x0 = jax.random.normal(jax.random.PRNGKey(4), (5, DIM))
    x1 = jax.random.normal(jax.random.PRNGKey(5), (5, DIM)) + 2.0
    for t_end, target in ((0.0, x0), (1.0, x1)):
        mu, ls = bridge(x0, x1, jnp.full(5, t_end))
        np.testing.assert_allclose(mu, target, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ls, jnp.log(0.02), rtol=1e-6)
    _, ls_mid = bridge(x0, x1, jnp.full(5, 0.5))
    assert bool(jnp.all(ls_mid > jnp.log(0.02)))


def test_prior_kl_matches_closed_form_for_vp_with_finite_gamma():
    with jax.enable_x64(True):
        gamma_max = 5.0
        fwd = forward.vp_forward(schedules.linear_gamma(-10.0, gamma_max))
        x = jax.random.normal(jax.random.PRNGKey(0), (6, DIM), jnp.float64)
        a2, s2 = 1.0 / (1.0 + np.exp(gamma_max)), 1.0 / (1.0 + np.exp(-gamma_max))
        expected = 0.5 * np.sum(a2 * np.asarray(x) ** 2 + s2 - 1.0 - np.log(s2), axis=-1)
        np.testing.assert_allclose(prior_loss(fwd, x), expected, rtol=1e-10)
        assert bool(np.all(expected > 0))


@pytest.mark.parametrize("make", [schedules.linear_gamma, schedules.cosine_gamma])
def test_fixed_schedules_hit_endpoints_and_increase(make):
    gamma = make(-9.0, 4.0)
    t = jnp.linspace(0.0, 1.0, 101)
    g = gamma(t)
    np.testing.assert_allclose([g[0], g[-1]], [-9.0, 4.0], rtol=1e-5)
    assert bool(jnp.all(jnp.diff(g) > 0))


def test_learned_schedule_is_monotone_with_learnable_endpoints():
    params = schedules.init_monotone_gamma(jax.random.PRNGKey(0), -8.0, 6.0, hidden=32)
    t = jnp.linspace(0.0, 1.0, 201)
    g = schedules.monotone_gamma(params)(t)
    np.testing.assert_allclose([g[0], g[-1]], [-8.0, 6.0], rtol=1e-5)
    assert bool(jnp.all(jnp.diff(g) > 0))
    grads = jax.grad(lambda p: jnp.sum(schedules.monotone_gamma(p)(t) ** 2))(params)
    assert all(bool(jnp.any(v != 0)) for v in jax.tree_util.tree_leaves(grads))


def test_score_is_gradient_of_gaussian_log_density(core_nets):
    fwd = _neural(jax.random.PRNGKey(1), core_nets)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, DIM))
    t = jnp.array([0.2, 0.5, 0.7, 0.9])
    m = forward.marginal_and_velocity(fwd, x, t)
    z = jax.random.normal(jax.random.PRNGKey(3), (4, DIM))

    def log_q(zz):
        return jnp.sum(-0.5 * ((zz - m.mu) / m.sigma) ** 2 - m.log_sigma)

    np.testing.assert_allclose(drifts.score(m, z), jax.grad(log_q)(z), rtol=1e-5)


def test_reverse_drift_difference_equals_direct_difference(core_nets):
    fwd = _neural(jax.random.PRNGKey(4), core_nets)
    x, x_hat, z = (jax.random.normal(jax.random.PRNGKey(i), (4, DIM)) for i in (5, 6, 7))
    t = jnp.array([0.1, 0.3, 0.6, 0.95])
    g2 = jnp.array([0.5, 1.0, 2.0, 0.1])
    m, m_hat = (forward.marginal_and_velocity(fwd, v, t) for v in (x, x_hat))
    direct = drifts.reverse_drift(m, z, g2) - drifts.reverse_drift(m_hat, z, g2)
    np.testing.assert_allclose(drifts.reverse_drift_difference(m, m_hat, z, g2), direct,
                               rtol=1e-4, atol=1e-4)
    expected_fb = drifts.ode_drift(m, z) - 0.5 * g2[:, None] * drifts.score(m, z)
    np.testing.assert_allclose(drifts.reverse_drift(m, z, g2), expected_fb, rtol=1e-5)


def test_vp_matching_volatility_is_sigma2_times_gamma_prime():
    gamma = schedules.cosine_gamma()
    t = jnp.array([0.1, 0.5, 0.9])
    h = 1e-3
    fd = (gamma(t + h) - gamma(t - h)) / (2 * h)
    np.testing.assert_allclose(volatility.vp_matching(gamma)(t),
                               jax.nn.sigmoid(gamma(t)) * fd, rtol=1e-3)


def test_learned_volatility_starts_at_base_and_stays_positive():
    base = volatility.delta_matched(0.01)
    t = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(volatility.learned(jnp.zeros_like, base)(t), base(t), rtol=1e-6)
    wild = volatility.learned(lambda tt: -50.0 + 100.0 * tt, base)(t)
    assert bool(jnp.all(wild > 0))
    np.testing.assert_allclose(base(jnp.zeros(1)), 1e-4 * 4 * np.log(100.0), rtol=1e-3)


def test_preconditioning_formula():
    pred = drifts.preconditioned(lambda z, t: jnp.full_like(z, 2.0), delta=0.01)
    z = jnp.ones((2, DIM))
    np.testing.assert_allclose(pred(z, jnp.array([0.0, 1.0])),
                               jnp.array([[1.0 + 0.02] * DIM, [2.02] * DIM]), rtol=1e-6)


@pytest.mark.parametrize("name", ["vp", "neural_init", "straight_init"])
def test_matched_volatility_makes_the_forward_sde_forget_x(name):
    """∂/∂x of the conditional forward SDE drift f + (g²/2)∇log q vanishes (SPEC §1.3)."""
    with jax.enable_x64(True):
        if name == "vp":
            gamma = schedules.cosine_gamma()
            fwd, g2 = forward.vp_forward(gamma), volatility.vp_matching(gamma)
        else:
            straight = name == "straight_init"
            fwd = forward.neural_forward(lambda x, t: (jnp.zeros_like(x), jnp.zeros_like(x)),
                                         0.01, straight)
            g2 = (volatility.straight_matched if straight else volatility.neural_matched)(0.01)
        t = jnp.array([0.05, 0.4, 0.8, 0.97])
        z = jax.random.normal(jax.random.PRNGKey(0), (4, DIM), jnp.float64)

        def sde_drift(x):
            m = forward.marginal_and_velocity(fwd, x, t)
            return drifts.reverse_drift(m, z, -g2(t))  # f − (−g²/2)∇log q = f + (g²/2)∇log q

        x = jax.random.normal(jax.random.PRNGKey(1), (4, DIM), jnp.float64)
        jac = jax.jacfwd(lambda v: jnp.sum(sde_drift(v), axis=0))(x)
        np.testing.assert_allclose(jac, 0.0, atol=1e-9)
        # A mismatched volatility does not forget x: the test can fail.
        wrong = jax.jacfwd(lambda v: jnp.sum(drifts.reverse_drift(
            forward.marginal_and_velocity(fwd, v, t), z, -2.0 * g2(t)), axis=0))(x)
        assert float(jnp.max(jnp.abs(wrong))) > 1e-2


@pytest.mark.parametrize("t_value", [0.0, 0.02, 0.3, 0.9, 1.0])
def test_edm_predictor_is_gaussian_posterior_mean_and_target_has_unit_variance(t_value):
    """x ~ N(m, diag σ_d²) per channel, z from the untrained neural process. With a zero
    network x̂ is the closed-form posterior mean m + a σ_d² (z − a m) / (a² σ_d² + s²); the
    network's input c_in (z − E z) and its target (x − x̂₀) / c_out have unit variance
    (Monte Carlo, 2e5 draws), at every t."""
    delta, n = 0.01, 200_000
    mean, std = jnp.array([0.7, -0.4]), jnp.array([2.0, 0.3])
    base = forward.neural_forward(lambda x, t: (jnp.zeros_like(x), jnp.zeros_like(x)), delta)
    x = mean[None] + std[None] * jax.random.normal(jax.random.PRNGKey(0), (n, 2))
    t = jnp.full((n,), t_value)
    mu, log_sigma = base(x, t)
    z = mu + jnp.exp(log_sigma) * jax.random.normal(jax.random.PRNGKey(1), (n, 2))
    inputs = []

    def zero_net(zin, tt):
        inputs.append(zin)
        return jnp.zeros_like(zin)

    x_hat = drifts.edm_preconditioned(zero_net, base, mean, std)(z, t)
    a, s = 1.0 - t_value, delta ** (1.0 - t_value)
    posterior = mean[None] + a * std[None] ** 2 * (z - a * mean[None]) / (
        a ** 2 * std[None] ** 2 + s ** 2)
    np.testing.assert_allclose(x_hat, posterior, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jnp.var(inputs[0], axis=0), 1.0, rtol=2e-2)
    c = drifts.edm_scalings(base, z[:1], t[:1], mean, std)
    target = (x - x_hat) / c.c_out
    np.testing.assert_allclose(jnp.var(target, axis=0), 1.0, rtol=2e-2)
    np.testing.assert_allclose(jnp.mean(target, axis=0), 0.0, atol=2e-2)


def test_eps_predictor_inverts_the_vp_marginal():
    """z = α x + σ ε and ε̂ = ε give x̂ = x exactly."""
    gamma = schedules.linear_gamma()
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    eps = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    t = jnp.linspace(0.05, 0.95, 5)
    mu, log_sigma = forward.vp_forward(gamma)(x, t)
    z = mu + jnp.exp(log_sigma) * eps
    x_hat = drifts.eps_predictor(lambda zz, tt: eps, gamma)(z, t)
    np.testing.assert_allclose(x_hat, x, rtol=1e-4, atol=1e-4)


def test_fourier_features_put_every_grey_level_at_one_phase():
    """The digits' 17 levels round(v · 255 / 16) in bin-centre units lie (to a bin) on the
    period 2 / 2⁴ of exponent 4, so sin/cos there are nearly constant over the lattice and
    vary between its points; shapes [.., C] -> [.., 2 K C] (sin block, then cos block)."""
    levels = np.round(np.arange(17) * 255 / 16)
    x = jnp.asarray((2 * levels + 1) / 256 - 1, jnp.float32).reshape(17, 1)
    f = drifts.fourier_features(x, (4, 5))
    assert f.shape == (17, 4)
    np.testing.assert_allclose(f[:, 0], jnp.sin(16 * jnp.pi * x[:, 0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f[:, 2], jnp.cos(16 * jnp.pi * x[:, 0]), rtol=1e-5, atol=1e-6)
    # One bin off the lattice at most: phase within 2π / 16 of the first level's.
    phase = np.angle(np.exp(1j * 16 * np.pi * np.asarray(x[:, 0]))
                     * np.exp(-1j * 16 * np.pi * x[0, 0]))
    assert np.max(np.abs(phase)) <= 2 * np.pi / 16 + 1e-6
    halfway = x[:-1] + 1 / 16   # between levels: the opposite phase
    assert float(jnp.max(drifts.fourier_features(halfway, (4,))[:, 1] - f[:-1, 2])) < -1.5


@pytest.mark.parametrize("t_value", [0.0, 0.3, 0.97])
def test_edm_features_are_of_the_linear_posterior_mean(t_value):
    """With features the network sees [c_in (z − E z), sin, cos of 2ⁿ π x̂₀] where x̂₀ is
    the zero-network x̂ (z in data units at small noise), and its output is still added as
    c_out · NN: at NN ≡ 0 the predictor is unchanged."""
    delta = 1e-3
    mean, std = jnp.array([-0.4]), jnp.array([0.75])
    base = forward.neural_forward(lambda x, t: (jnp.zeros_like(x), jnp.zeros_like(x)), delta)
    z = jax.random.normal(jax.random.PRNGKey(0), (6, 4, 4, 1))
    t = jnp.full((6,), t_value)
    seen = []

    def zero_net(zin, tt):
        seen.append(zin)
        return jnp.zeros(zin.shape[:-1] + (1,))

    plain = drifts.edm_preconditioned(zero_net, base, mean, std)(z, t)
    with_ff = drifts.edm_preconditioned(zero_net, base, mean, std, (4, 6))(z, t)
    np.testing.assert_allclose(with_ff, plain, rtol=1e-6)
    assert seen[1].shape == (6, 4, 4, 5)
    np.testing.assert_allclose(seen[1][..., :1], seen[0], rtol=1e-6)
    np.testing.assert_allclose(seen[1][..., 1:], drifts.fourier_features(plain, (4, 6)),
                               rtol=1e-5, atol=1e-5)


def test_eps_predictor_features_are_of_z():
    gamma = schedules.linear_gamma()
    z = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 2, 1))
    seen = []

    def net(zin, tt):
        seen.append(zin)
        return jnp.zeros(zin.shape[:-1] + (1,))

    drifts.eps_predictor(net, gamma, (7,))(z, jnp.full((3,), 0.5))
    np.testing.assert_allclose(seen[0], jnp.concatenate(
        [z, jnp.sin(128 * jnp.pi * z), jnp.cos(128 * jnp.pi * z)], -1), rtol=1e-4, atol=1e-4)
