"""The NELBO, NFDM-OT and NFBM losses against closed forms and known identities."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfdm_jax import decoders, drifts, forward, losses, schedules, volatility


def _vdm_loss(gamma, x, t, eps, predictor):
    """VDM's continuous-time diffusion loss ½ γ'(t) ‖ε − ε̂‖², written independently."""
    g, dg = jax.jvp(gamma, (t,), (jnp.ones_like(t),))
    alpha = jnp.sqrt(jax.nn.sigmoid(-g))[:, None, None, None]
    sigma = jnp.sqrt(jax.nn.sigmoid(g))[:, None, None, None]
    z = alpha * x + sigma * eps
    eps_hat = (z - alpha * predictor(z, t)) / sigma
    return 0.5 * dg * jnp.sum((eps - eps_hat) ** 2, axis=(1, 2, 3))


@pytest.mark.parametrize("make_gamma", [schedules.linear_gamma, schedules.cosine_gamma])
def test_vdm_identity_per_example(make_gamma):
    """SPEC §1.1: NFDM's diffusion term with a VP process and g² = σ²γ' is VDM's loss."""
    gamma = make_gamma()
    key = jax.random.PRNGKey(0)
    x = jax.random.uniform(key, (64, 4, 4, 3), minval=-1, maxval=1)
    t = jax.random.uniform(jax.random.PRNGKey(1), (64,))
    eps = jax.random.normal(jax.random.PRNGKey(2), x.shape)
    w = jax.random.normal(jax.random.PRNGKey(3), (3, 3))
    predictor = lambda z, t: jnp.tanh(z @ w) * 0.5 + 0.05 * t[:, None, None, None]  # noqa: E731
    ours = losses.diffusion_loss(forward.vp_forward(gamma), predictor,
                                 volatility.vp_matching(gamma), x, t, eps)
    np.testing.assert_allclose(ours, _vdm_loss(gamma, x, t, eps, predictor), rtol=1e-5)


def test_uniform_discrete_decoder_scores_exactly_eight_bits():
    pixels = jax.random.randint(jax.random.PRNGKey(0), (3, 4, 4, 3), 0, 256)
    x = decoders.centred(pixels)
    nll = decoders.discrete_nll(delta=1e8)(jnp.zeros_like(x), x)  # flat logits
    np.testing.assert_allclose(losses.bits_per_dim(nll, 48), 8.0, rtol=1e-6)


def test_discrete_decoder_is_a_normalised_categorical():
    values = jnp.arange(256)
    x = decoders.centred(values.reshape(1, 256))
    z0 = jnp.full_like(x, 0.123)
    nll = decoders.discrete_nll(delta=0.05)(z0, x)  # sum over all 256 outcomes at once
    log_p = -jnp.stack([decoders.discrete_nll(0.05)(z0[:, :1], x[:, i:i + 1])[0]
                        for i in range(256)])
    np.testing.assert_allclose(jax.scipy.special.logsumexp(log_p), 0.0, atol=1e-5)
    np.testing.assert_allclose(nll[0], -jnp.sum(log_p), rtol=1e-5)
    # A sharp decoder centred on the right bin is nearly certain.
    sharp = decoders.discrete_nll(delta=1e-3)(x, x)
    assert float(sharp[0]) < 1e-3


def test_gaussian_decoder_and_dequantization_jacobian():
    x = jnp.array([[0.1, -0.3]])
    z0 = jnp.array([[0.12, -0.25]])
    delta = 0.05
    expected = -jnp.sum(jax.scipy.stats.norm.logpdf(x, z0, delta))
    np.testing.assert_allclose(decoders.gaussian_nll(delta)(z0, x), expected, rtol=1e-6)
    assert decoders.log_jacobian_per_dim("dequantized") == pytest.approx(math.log(128))
    # A uniform density on [−1, 1]^D is 8 bits per 8-bit pixel after the Jacobian.
    np.testing.assert_allclose(
        losses.bits_per_dim(jnp.array([2 * math.log(2.0)]), 2,
                            decoders.log_jacobian_per_dim("dequantized")), 8.0, rtol=1e-6)
    pixels = jnp.array([[0, 255, 17]])
    xt = decoders.dequantized(jax.random.PRNGKey(0), pixels)
    assert bool(jnp.all((xt >= -1) & (xt < 1)))
    np.testing.assert_array_equal(jnp.floor((xt + 1) * 128), pixels)


def test_stratified_times_cover_every_stratum_once():
    t = losses.stratified_times(jax.random.PRNGKey(3), 16)
    np.testing.assert_array_equal(jnp.sort(jnp.floor(t * 16)), jnp.arange(16))


# Gaussian data N(m, s² I) with a VP process and the exact posterior-mean predictor.
_M = jnp.array([[0.3, -0.5]])
_S = jnp.array([[0.7, 1.2]])
_GAMMA = schedules.linear_gamma(-10.0, 10.0)


def _posterior_mean(z, t):
    g = _GAMMA(t)[:, None]
    a2, s2 = jax.nn.sigmoid(-g), jax.nn.sigmoid(g)
    a = jnp.sqrt(a2)
    return _M + a * _S ** 2 / (a2 * _S ** 2 + s2) * (z - a * _M)


def _model_nll(x):
    """−log p_model(x): z_0 has the forward marginal, decoded with N(z_0, δ²)."""
    g0 = _GAMMA(jnp.zeros(()))
    a2, s2 = jax.nn.sigmoid(-g0), jax.nn.sigmoid(g0)
    var = a2 * _S ** 2 + s2 + jnp.exp(g0)
    return -jnp.sum(jax.scipy.stats.norm.logpdf(x, jnp.sqrt(a2) * _M, jnp.sqrt(var)), axis=-1)


def _nelbo_mc(predictor, x, n_samples):
    fwd = forward.vp_forward(_GAMMA)
    decoder = decoders.gaussian_nll(float(jnp.exp(0.5 * _GAMMA(jnp.zeros(())))))
    # Tiled, not repeated: stratified t then spreads over [0, 1] for every point.
    xs = jnp.tile(x, (n_samples, 1))
    terms = losses.nelbo(fwd, predictor, volatility.vp_matching(_GAMMA), xs,
                         jax.random.PRNGKey(0), decoder_nll=decoder)
    per = terms.total.reshape(n_samples, x.shape[0]).T
    return per.mean(axis=1), per.std(axis=1) / math.sqrt(n_samples)


def test_nelbo_bounds_exact_nll_of_gaussian_data_tightly():
    x = _M + _S * jax.random.normal(jax.random.PRNGKey(5), (6, 2))
    mean, stderr = _nelbo_mc(_posterior_mean, x, 50_000)
    gap = mean - _model_nll(x)
    # Tolerance: the bound holds per point up to 4 Monte Carlo standard errors (~0.03 nats),
    # and is tight to within 4 standard errors + 0.01 nats: the exact predictor with
    # VP-matched g leaves only the decoder's mismatch with q(x | z_0), far below 0.01.
    assert bool(jnp.all(gap > -4 * stderr)), (gap, stderr)
    assert bool(jnp.all(jnp.abs(gap) < 4 * stderr + 0.01)), (gap, stderr)
    worse, worse_err = _nelbo_mc(lambda z, t: 0.9 * _posterior_mean(z, t), x, 50_000)
    assert bool(jnp.all(worse - mean > 4 * (stderr + worse_err))), (worse, mean)


def _ot(fwd, pred, x, t, eps, lam):
    """NFDM-OT terms with a fixed volatility and decoder (they do not enter the penalty)."""
    return losses.nfdm_ot_terms(fwd, pred, volatility.delta_matched(0.01), x, t, eps,
                                decoder_nll=decoders.gaussian_nll(0.01), curvature_weight=lam)


def test_curvature_penalty_zero_on_straight_paths_positive_on_curved():
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    eps = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
    t = jax.random.uniform(jax.random.PRNGKey(2), (8,), minval=0.05, maxval=0.95)
    # A predictor that knows x makes the ODE through z_t the straight conditional path.
    oracle = lambda z, tt: x  # noqa: E731
    straight = _ot(forward.straight_forward(), oracle, x, t, eps, 1.0)
    np.testing.assert_allclose(straight.curvature, 0.0, atol=1e-8)
    curved = _ot(forward.vp_forward(schedules.cosine_gamma()), oracle, x, t, eps, 1.0)
    assert bool(jnp.all(curved.curvature > 1e-3))


def _rk4(drift, z, t, h, n):
    """z(t + h) of dz/dt = drift(z, t) by ``n`` RK4 steps (``t`` ``[B]``, ``h`` scalar)."""
    dt = h / n
    for i in range(n):
        tt = t + i * dt
        k1 = drift(z, tt)
        k2 = drift(z + 0.5 * dt * k1, tt + 0.5 * dt)
        k3 = drift(z + 0.5 * dt * k2, tt + 0.5 * dt)
        k4 = drift(z + dt * k3, tt + dt)
        z = z + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z


def _trajectory_acceleration(drift, z, t, h=1e-4, n=10):
    """d/dt f̂(z(s), s) at s = t along the ODE solution through (z, t), by central
    differences of the velocity at its finely integrated neighbours z(t ± h)."""
    ahead, behind = _rk4(drift, z, t, h, n), _rk4(drift, z, t, -h, n)
    return (drift(ahead, t + h) - drift(behind, t - h)) / (2 * h)


def _sigma(fwd, x, t):
    """σ(x, t) of a forward process, ``[B, *D]``."""
    return jnp.exp(fwd(x, t)[1]) * jnp.ones_like(x)


def _conditional_path_acceleration(fwd, drift, x, eps, t, h=1e-4):
    """The old, wrong penalty (issue 21): d/dt f̂(F(ε, t, x), t) along the forward path."""
    def along(tt):
        mu, ls = fwd(x, tt)
        return drift(mu + jnp.exp(ls) * eps, tt)
    return (along(t + h) - along(t - h)) / (2 * h)


def test_curvature_is_the_generative_odes_acceleration_gaussian_closed_form(x64, oracle):
    """Gaussian data, a VP process and its exact posterior-mean predictor: f̂ is the exact
    probability-flow drift, and the penalty must equal the acceleration of its solutions
    (finite differences along finely integrated trajectories), not the derivative along
    the forward conditional path, which differs wherever x̂(z_t) ≠ x."""
    fwd, pred = forward.vp_forward(oracle.gamma), oracle.exact_predictor
    drift = drifts.generative_drift(fwd, pred, volatility.zero())
    n = 6
    x = oracle.mean + jax.random.normal(jax.random.PRNGKey(1), (n, oracle.dim)) @ (
        oracle.q * jnp.sqrt(oracle.eigs)).T
    eps = jax.random.normal(jax.random.PRNGKey(2), (n, oracle.dim))
    t = jnp.linspace(0.15, 0.85, n)
    z = losses.sample_z(forward.marginal_and_velocity(fwd, x, t), eps)
    expected = _trajectory_acceleration(drift, z, t)
    # Finite differences of step 1e-4 leave O(1e-8 × jerk): ~1e-6 near t = 1, where
    # the linear log-SNR schedule moves fastest; the old form is off by more than 5 %.
    np.testing.assert_allclose(losses.ode_acceleration(fwd, pred, z, t), expected,
                               rtol=1e-4, atol=1e-5)
    lam, sigma = 0.3, _sigma(fwd, x, t)
    np.testing.assert_allclose(_ot(fwd, pred, x, t, eps, lam).curvature,
                               lam * jnp.sum((sigma * expected) ** 2, axis=-1), rtol=1e-4)
    # The old form agrees only where x̂(z_t) ≈ x (small t) and is 10–30 % off at larger t.
    old = _conditional_path_acceleration(fwd, drift, x, eps, t)
    assert not np.allclose(old, expected, rtol=1e-4, atol=1e-5)
    assert float(jnp.max(jnp.linalg.norm(old - expected, axis=-1)
                         / jnp.linalg.norm(expected, axis=-1))) > 0.1


def test_curvature_is_the_generative_odes_acceleration_neural_process(x64, core_nets):
    """The same against finite differences for a neural forward process and predictor."""
    params = core_nets.init_all(jax.random.PRNGKey(0), 2)
    fwd = forward.neural_forward(core_nets.forward_net(params["forward"]))
    pred = core_nets.predictor_net(params["predictor"])
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 2), jnp.float64)
    eps = jax.random.normal(jax.random.PRNGKey(2), (4, 2), jnp.float64)
    t = jnp.array([0.2, 0.4, 0.6, 0.8])
    drift = drifts.generative_drift(fwd, pred, volatility.zero())
    z = losses.sample_z(forward.marginal_and_velocity(fwd, x, t), eps)
    expected = _trajectory_acceleration(drift, z, t)
    lam, sigma = 0.3, _sigma(fwd, x, t)
    terms = _ot(fwd, pred, x, t, eps, lam)
    np.testing.assert_allclose(terms.curvature,
                               lam * jnp.sum((sigma * expected) ** 2, axis=-1), rtol=1e-6)
    old = _conditional_path_acceleration(fwd, drift, x, eps, t)
    assert not np.allclose(lam * jnp.sum((sigma * old) ** 2, axis=-1), terms.curvature,
                           rtol=1e-2)


def test_weighted_penalty_is_the_change_of_x_hat_along_the_straight_paths_ode(x64, core_nets):
    """On the straight path (μ = (1 − t) x, σ = t + (1 − t) δ) the ODE's acceleration is
    −(d x̂ / dt) / σ along its solutions, whatever the predictor: the penalty λ‖σ a‖² is
    λ‖d x̂ / dt‖², by finite differences of x̂ along finely integrated trajectories."""
    params = core_nets.init_all(jax.random.PRNGKey(0), 2)
    fwd = forward.straight_forward(0.01)
    pred = drifts.preconditioned(core_nets.predictor_net(params["predictor"]), 0.01)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 2), jnp.float64)
    eps = jax.random.normal(jax.random.PRNGKey(2), (4, 2), jnp.float64)
    t, h = jnp.array([0.05, 0.3, 0.6, 0.9]), 1e-4
    drift = drifts.generative_drift(fwd, pred, volatility.zero())
    z = losses.sample_z(forward.marginal_and_velocity(fwd, x, t), eps)
    ahead, behind = _rk4(drift, z, t, h, 10), _rk4(drift, z, t, -h, 10)
    dx_hat = (pred(ahead, t + h) - pred(behind, t - h)) / (2 * h)
    scaled = _sigma(fwd, x, t) * losses.ode_acceleration(fwd, pred, z, t)
    np.testing.assert_allclose(scaled, -dx_hat, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_ot(fwd, pred, x, t, eps, 0.3).curvature,
                               0.3 * jnp.sum(dx_hat ** 2, axis=-1), rtol=1e-5)
    # Unweighted, the same predictor's penalty grows as 1/σ² towards t = 0.
    unweighted = jnp.sum(losses.ode_acceleration(fwd, pred, z, t) ** 2, axis=-1)
    assert float(unweighted[0] / jnp.sum(dx_hat[0] ** 2)) > 100


def test_ot_terms_are_the_nelbo_plus_the_penalty_with_the_velocity_read_off(x64, core_nets):
    """NFDM-OT's NELBO terms are NFDM's; the ODE velocity it reads off the NELBO's marginal
    at x̂ gives the penalty and gradients of a recomputed f̂(z_t, t)."""
    params = core_nets.init_all(jax.random.PRNGKey(0), 2)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 2), jnp.float64)
    eps = jax.random.normal(jax.random.PRNGKey(2), (5, 2), jnp.float64)
    t = jnp.linspace(0.1, 0.9, 5)
    lam = 0.5

    def fns(p):
        return (forward.neural_forward(core_nets.forward_net(p["forward"])),
                drifts.preconditioned(core_nets.predictor_net(p["predictor"]), 0.01))

    def recomputed(p):
        fwd, pred = fns(p)
        z = losses.sample_z(forward.marginal_and_velocity(fwd, x, t), eps)
        # σ is a weight, not a path to a lower penalty: no gradient through it.
        sigma = jax.lax.stop_gradient(_sigma(fwd, x, t))
        return lam * jnp.sum(jnp.square(sigma * losses.ode_acceleration(fwd, pred, z, t)),
                             axis=-1)

    ot = _ot(*fns(params), x, t, eps, lam)
    nelbo = losses.nelbo_terms(*fns(params), volatility.delta_matched(0.01), x, t, eps,
                               decoder_nll=decoders.gaussian_nll(0.01))
    np.testing.assert_allclose(ot.bound, nelbo.total, rtol=1e-12)
    np.testing.assert_allclose(ot.total, nelbo.total + ot.curvature, rtol=1e-12)
    assert float(jnp.min(ot.curvature)) > 0
    np.testing.assert_allclose(ot.curvature, recomputed(params), rtol=1e-10)
    read_off = jax.grad(lambda p: jnp.sum(_ot(*fns(p), x, t, eps, lam).curvature))(params)
    chex.assert_trees_all_close(read_off, jax.grad(lambda p: jnp.sum(recomputed(p)))(params),
                                rtol=1e-8, atol=1e-12)


def test_obstacle_penalty_is_positive_inside_the_disc_only():
    c = losses.disc_obstacle(jnp.zeros(2), 1.0)
    np.testing.assert_allclose(c(jnp.array([[0.0, 0.5], [2.0, 0.0]])), [0.5, 0.0])


def _plain_losses(params, x, x1, key, core_nets):
    """All three objectives with plain-jnp networks closed over ``params``."""
    fwd = forward.neural_forward(core_nets.forward_net(params["forward"]))
    pred = drifts.preconditioned(core_nets.predictor_net(params["predictor"]), 0.01)
    vol = volatility.learned(core_nets.volatility_net(params["volatility"]),
                             volatility.delta_matched(0.01))
    dec = decoders.gaussian_nll(0.01)
    nelbo = losses.nelbo(fwd, pred, vol, x, key, decoder_nll=dec).total
    t, eps = losses.sample_t_eps(key, x)
    ot = losses.nfdm_ot_terms(fwd, pred, vol, x, t, eps, decoder_nll=dec,
                              curvature_weight=0.1).total
    bridge_net = lambda a, b, tt: core_nets.forward_net(params["forward"])(a - b, tt)  # noqa
    bridge = losses.nfbm_loss(
        forward.bridge_forward(bridge_net), lambda z, tt, b: pred(z + b, tt), vol, x, x1, t, eps,
        decoder_nll=dec, obstacle=losses.disc_obstacle(jnp.zeros(2), 5.0),
        obstacle_weight=1.0).total
    return nelbo, ot, bridge


@pytest.mark.parametrize("which", [0, 1, 2])
def test_losses_give_gradients_for_every_parameter_without_flax(which, core_nets):
    params = core_nets.init_all(jax.random.PRNGKey(0), 2)
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 2))
    x1 = jax.random.normal(jax.random.PRNGKey(2), (32, 2))
    grads = jax.jit(jax.grad(
        lambda p: jnp.mean(_plain_losses(p, x, x1, jax.random.PRNGKey(3),
                                         core_nets)[which])))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.all(jnp.isfinite(g))), path
        assert float(jnp.max(jnp.abs(g))) > 0, path


def test_losses_work_under_vmap_and_do_not_retrace(core_nets):
    params = core_nets.init_all(jax.random.PRNGKey(0), 2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, x, key):
        return jnp.stack([v.mean() for v in _plain_losses(p, x, x[::-1], key, core_nets)])

    for i in range(3):
        x = jax.random.normal(jax.random.PRNGKey(i), (16, 2))
        out = step(params, x, jax.random.PRNGKey(i))
        assert bool(jnp.all(jnp.isfinite(out)))
    # vmap over independent groups of a batch gives the same as calling per group.
    xs = jax.random.normal(jax.random.PRNGKey(9), (3, 8, 2))
    keys = jax.random.split(jax.random.PRNGKey(10), 3)
    batched = jax.vmap(lambda x, k: _plain_losses(params, x, x[::-1], k, core_nets)[0])(xs, keys)
    single = _plain_losses(params, xs[1], xs[1][::-1], keys[1], core_nets)[0]
    np.testing.assert_allclose(batched[1], single, rtol=1e-5)
    chex.clear_trace_counter()


def _unpinned(fn):
    """The same process without its PinnedEnds: the losses then run the network at t = 0, 1."""
    return lambda *args: fn(*args)


def test_closed_form_boundary_terms_equal_network_evaluated_values_and_gradients(x64, core_nets):
    """Pinned ends skip the network at t = 0 and t = 1 without changing L_rec, L_prior or
    their gradients with respect to the parameters and the data (neural process, bridge)."""
    params = core_nets.init_all(jax.random.PRNGKey(0), 2)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 2), jnp.float64)
    x1 = jax.random.normal(jax.random.PRNGKey(2), (6, 2), jnp.float64)
    eps = jax.random.normal(jax.random.PRNGKey(3), (6, 2), jnp.float64)
    dec = decoders.discrete_nll(0.05)  # non-Gaussian decoder: values depend on z_0 non-trivially

    def terms(p, x, pinned):
        fwd = forward.neural_forward(core_nets.forward_net(p["forward"]), delta=0.03)
        bridge = forward.bridge_forward(
            lambda a, b, tt: core_nets.forward_net(p["forward"])(a - b, tt), delta=0.02)
        if not pinned:
            fwd, bridge = _unpinned(fwd), _unpinned(bridge)
        assert (forward.pinned_ends(fwd) is not None) == pinned
        closed = lambda a, tt: bridge(a, x1, tt)  # noqa: E731
        closed = forward.with_pinned_ends(closed, forward.pinned_ends(bridge))
        return jnp.stack([losses.reconstruction_loss(fwd, dec, x, eps),
                          losses.prior_loss(fwd, x),
                          losses.reconstruction_loss(closed, dec, x, eps)])

    np.testing.assert_allclose(terms(params, x, True), terms(params, x, False), rtol=1e-12)
    assert float(jnp.min(terms(params, x, True)[0])) > 0.1  # not a trivially zero term
    grad = jax.grad(lambda p, x, pinned: jnp.sum(terms(p, x, pinned) ** 2), argnums=(0, 1))
    closed_g, network_g = grad(params, x, True), grad(params, x, False)
    chex.assert_trees_all_close(closed_g, network_g, rtol=1e-12, atol=1e-12)
    assert float(jnp.max(jnp.abs(closed_g[1]))) > 0  # the data gradient is exercised


def test_nfbm_and_nelbo_skip_the_network_at_pinned_ends(core_nets):
    """The traced objectives call the forward network once per jvp only (t = 0, 1 gone)."""
    calls = []
    params = core_nets.init_all(jax.random.PRNGKey(0), 2)

    def counting(x, tt):
        calls.append(tt)
        return core_nets.forward_net(params["forward"])(x, tt)

    x = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
    pred = core_nets.predictor_net(params["predictor"])
    losses.nelbo(forward.neural_forward(counting), pred, volatility.delta_matched(0.01), x,
                 jax.random.PRNGKey(2), decoder_nll=decoders.gaussian_nll(0.01))
    assert len(calls) == 2  # forward jvp at x and at x̂
    calls.clear()
    t, eps = losses.sample_t_eps(jax.random.PRNGKey(3), x)
    obstacle = losses.disc_obstacle(jnp.zeros(2), 5.0)
    bridge = forward.bridge_forward(lambda a, b, tt: counting(a - b, tt))
    terms = losses.nfbm_loss(bridge, lambda z, tt, b: pred(z + b, tt),
                             volatility.delta_matched(0.01), x, -x, t, eps,
                             decoder_nll=decoders.gaussian_nll(0.01), obstacle=obstacle,
                             obstacle_weight=2.0)
    assert len(calls) == 2
    mu, ls = bridge(x, -x, t)  # the obstacle is evaluated on the L_diff sample z_t
    np.testing.assert_allclose(terms.obstacle, 2.0 * obstacle(mu + jnp.exp(ls) * eps), rtol=1e-6)
