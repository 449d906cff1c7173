"""The running estimate of a learned process's noise over its base, and the edm scalings
that follow it (issue #9: NFDM's σ(t) grows 5–10× above the scalings' base on the digits)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import toy2d
from nfdm_jax import drifts, forward, noise_stats
from nfdm_jax.models import Model


def test_empty_statistics_read_the_base_and_need_both_ends():
    np.testing.assert_array_equal(noise_stats.log_ratio(noise_stats.init(9),
                                                        jnp.linspace(0.0, 1.0, 7)), 0.0)
    with pytest.raises(ValueError, match="both ends"):
        noise_stats.init(1)


def test_a_constant_ratio_is_read_where_seen_and_the_base_beyond():
    stats = noise_stats.init(11)                      # grid 0, 0.1, ..., 1
    for i in range(20):
        t = jax.random.uniform(jax.random.key(i), (64,), maxval=0.5)
        stats = noise_stats.update(stats, t, jnp.full((64,), 1.3), 0.9)
    read = noise_stats.log_ratio(stats, jnp.array([0.0, 0.23, 0.45, 0.55, 0.9]))
    # Seen grid times hold exactly 1.3; 0.55 lies halfway to the unseen 0.6, which reads 0.
    np.testing.assert_allclose(read, [1.3, 1.3, 1.3, 0.65, 0.0], rtol=1e-5, atol=1e-6)


def test_the_estimate_is_the_weighted_exponential_average():
    d, n, m = 0.9, 7, 4
    stats = noise_stats.init(11)
    t = jnp.array([0.3])                              # on a grid time: weight 1 there
    for value in [1.0] * n + [2.0] * m:
        stats = noise_stats.update(stats, t, jnp.array([value]), d)
    expected = (2.0 * (1 - d ** m) + d ** m * (1 - d ** n)) / (1 - d ** (n + m))
    np.testing.assert_allclose(noise_stats.log_ratio(stats, t), [expected], rtol=1e-5)


def test_per_example_log_ratio_of_a_doubled_noise_is_log_four():
    log_s = jnp.broadcast_to(jnp.log(jnp.array([[0.1], [0.5]])), (2, 3))
    np.testing.assert_allclose(noise_stats.per_example_log_ratio(log_s + jnp.log(2.0), log_s),
                               [np.log(4.0)] * 2, rtol=1e-6)


def test_edm_scalings_with_a_ratio_are_those_of_the_base_with_noise_scaled():
    base = forward.neural_forward(lambda x, t: (jnp.zeros_like(x), jnp.zeros_like(x)), 0.01)
    log_r = jnp.array([0.0, 1.0, 2.5])

    def scaled(x, t):  # the same linear process with s → √r s
        mu, log_s = base(x, t)
        return mu, log_s + 0.5 * log_r[:, None]

    z, t = jnp.ones((3, 2)), jnp.array([0.2, 0.5, 0.8])
    mean, std = jnp.array([0.5, -1.0]), jnp.array([2.0, 0.5])
    got = drifts.edm_scalings(base, z, t, mean, std, log_r)
    want = drifts.edm_scalings(scaled, z, t, mean, std)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_noise_time_is_where_the_base_has_the_learned_noise():
    delta = 0.01
    base = forward.neural_forward(lambda x, t: (jnp.zeros_like(x), jnp.zeros_like(x)), delta)
    z, t, log_r = jnp.ones((3, 2)), jnp.array([0.2, 0.5, 0.8]), jnp.array([0.0, 1.0, -0.7])
    tau = drifts.noise_time(base, z, t, log_r)
    np.testing.assert_allclose(base(z, tau)[1], base(z, t)[1] + 0.5 * log_r[:, None], rtol=1e-6)
    # log s = (1 − t) log δ: a noise √e times the base's sits ½ / log(1/δ) later.
    np.testing.assert_allclose(tau[1], 0.5 + 0.5 / np.log(1 / delta), rtol=1e-6)


def test_edm_network_sees_the_noise_time_only_when_asked():
    base = forward.neural_forward(lambda x, t: (jnp.zeros_like(x), jnp.zeros_like(x)), 0.01)
    z, t = jnp.ones((2, 3)), jnp.array([0.3, 0.6])
    seen = []

    def net(inputs, t_in):
        seen.append(t_in)
        return jnp.zeros_like(inputs)

    ratio = lambda tt: jnp.full_like(tt, 2.0)  # noqa: E731
    for flag in (False, True):
        drifts.edm_preconditioned(net, base, 0.0, 1.0, noise_log_ratio=ratio,
                                  time_from_noise=flag)(z, t)
    np.testing.assert_array_equal(seen[0], t)
    np.testing.assert_allclose(seen[1], drifts.noise_time(base, z, t, ratio(t)), rtol=1e-6)
    assert float(jnp.min(seen[1] - t)) > 0.0
    with pytest.raises(ValueError, match="needs noise_log_ratio"):
        drifts.edm_preconditioned(net, base, 0.0, 1.0, time_from_noise=True)


def test_nfdm_with_noise_time_reads_its_predictors_time_from_the_statistics():
    x = jax.random.normal(jax.random.key(0), (16, 2))
    models = {}
    for flag in (False, True):
        c = toy2d.get_config("tiny")
        c.unlock()
        c.model.edm_noise_time = flag
        models[flag] = Model(c, (2,))
    params = models[True].init(jax.random.key(1), {"x": x})
    # Off the zero-initialised output layer, so that the network's time input matters.
    leaves, tree = jax.tree.flatten(params["predictor"])
    params["predictor"] = jax.tree.unflatten(tree, [
        p + 0.1 * jax.random.normal(jax.random.key(i), p.shape) for i, p in enumerate(leaves)])
    losses = {}
    for inflated in (False, True):
        if inflated:
            params["stats"] = noise_stats.update(params["stats"], jnp.linspace(0, 1, 33),
                                                 jnp.full((33,), 1.5), 0.0)
        losses[inflated] = [float(models[f].loss(params, {"x": x}, jax.random.key(2))[0])
                            for f in (False, True)]
    assert losses[False][0] == losses[False][1]     # no noise moved: τ = t
    assert np.isfinite(losses[True][1]) and losses[True][0] != losses[True][1]


def test_tracked_scalings_restore_unit_conditioning_when_the_process_inflates_its_noise():
    """A forward network whose output bias adds 4 t (1 − t) to log σ leaves the untrained
    scalings behind; a few training batches' statistics put the predictor's input and
    target back at unit std, and no gradient reaches the statistics."""
    from experiments import fidelity_report as fr

    mean, std = np.array([0.5, -1.0]), np.array([2.0, 0.5])
    x = jnp.asarray(mean + std * np.random.default_rng(0).standard_normal((4096, 2)), jnp.float32)
    c = toy2d.get_config("tiny,learned_sigma")  # a forward network that sets σ
    c.unlock()
    c.model.data_mean, c.model.data_std = tuple(mean), tuple(std)
    c.model.edm_track_decay = 0.5
    model = Model(c, (2,))
    params = model.init(jax.random.key(0), {"x": x[:8]})
    out = params["forward"]["mlp"]["out"]
    params["forward"]["mlp"]["out"] = {**out, "bias": out["bias"].at[2:].set(4.0)}
    loss_and_stats = jax.jit(model.loss_and_stats)
    for i in range(6):
        _, (metrics, state) = loss_and_stats(params, {"x": x}, jax.random.key(i))
        params |= state
    assert metrics["noise_log_ratio"] == pytest.approx(8.0 / 6.0, rel=0.1)  # E_t 8 t (1 − t)
    ts = np.array([0.2, 0.5, 0.9])
    tracked = fr.conditioning_stats(model, params, x, ts, jax.random.key(1))
    np.testing.assert_allclose(tracked["input_std"], 1.0, atol=0.05)
    np.testing.assert_allclose(tracked["target_std"], 1.0, atol=0.05)
    grads = jax.grad(lambda p: model.loss(p, {"x": x[:64]}, jax.random.key(0))[0])(params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["stats"]))
