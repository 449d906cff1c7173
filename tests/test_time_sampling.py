"""Importance sampling of t (issue #9): the weighted estimate stays unbiased, a uniform
density reproduces the stratified times, the histogram follows the loss, the variance
drops, and the models and train step carry the density."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import toy2d
from nfdm_jax import losses, time_sampling
from nfdm_jax.models import Model

UNIFORM = 0.1


def _peaked(t):
    """An integrand like the digits' L_diff profile: ~0 early, a peak near 0.45."""
    return 300.0 * jnp.exp(-0.5 * jnp.square((t - 0.45) / 0.08)) + 5.0 * t


def _learned(num_bins=32, steps=200):
    state = time_sampling.init(num_bins)
    for i in range(steps):
        t, _ = time_sampling.sample(state, jax.random.key(i), 64, UNIFORM)
        state = time_sampling.update(state, t, _peaked(t), 0.9)
    return state


def test_an_empty_histogram_gives_the_stratified_times_with_unit_weights():
    key = jax.random.key(3)
    t, w = time_sampling.sample(time_sampling.init(8), key, 16, UNIFORM, t_min=0.01)
    np.testing.assert_allclose(t, losses.stratified_times(key, 16, 0.01), atol=1e-6)
    np.testing.assert_array_equal(w, 1.0)
    with pytest.raises(ValueError, match="at least one bin"):
        time_sampling.init(0)


def test_the_weighted_estimate_is_the_integral_for_any_density():
    # Change of variables: over u ∈ [0, 1), w(s(u)) f(s(u)) integrates to ∫ f. Midpoint
    # rule on u, exact up to the quadrature of f within the (tiny) u cells.
    state = {"sum": jnp.array([0.0, 0.0, 1.0, 4.0, 9.0, 16.0, 1.0, 0.01]),
             "weight": jnp.array([1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 0.0])}
    u = (jnp.arange(200_000) + 0.5) / 200_000
    s, w = time_sampling.warp(state, u, UNIFORM)
    f = lambda t: jnp.sin(3.0 * t) ** 2 + t  # noqa: E731
    np.testing.assert_allclose(float(jnp.mean(w * f(s))), 1.0 - np.sin(6.0) / 12.0, rtol=1e-5)
    assert float(jnp.min(jnp.diff(s))) >= 0.0 and float(s.max()) < 1.0


def test_density_follows_the_root_mean_square_with_a_uniform_floor():
    state = {"sum": jnp.array([0.0, 4.0, 16.0, 0.0]), "weight": jnp.array([1.0, 1.0, 1.0, 0.0])}
    p = time_sampling.density(state, UNIFORM)
    # rms 0, 2, 4 and the unseen bin reads the largest, 4: shape 0, 0.8, 1.6, 1.6.
    np.testing.assert_allclose(p, 0.9 * np.array([0.0, 0.8, 1.6, 1.6]) + 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(p.mean()), 1.0, rtol=1e-6)


def test_update_is_the_exponential_average_of_the_squared_loss_per_bin():
    state = time_sampling.init(4)
    for value in (1.0, 3.0):
        state = time_sampling.update(state, jnp.array([0.3, 0.3]), jnp.array([value, value]),
                                     0.5)
    # bin 1 ([0.25, 0.5)): sum 0.5 · 2 + 2 · 9 = 19, weight 0.5 · 2 + 2 = 3
    np.testing.assert_allclose(state["sum"], [0.0, 19.0, 0.0, 0.0])
    np.testing.assert_allclose(state["weight"], [0.0, 3.0, 0.0, 0.0])
    grad = jax.grad(lambda v: time_sampling.update(time_sampling.init(4), jnp.array([0.1]),
                                                   v, 0.5)["sum"].sum())(jnp.ones(1))
    np.testing.assert_array_equal(grad, 0.0)


def test_the_learned_density_cuts_the_variance_of_a_peaked_integral():
    state = _learned()
    keys = jax.random.split(jax.random.key(1000), 4000)

    def estimate(st):
        def one(k):
            t, w = time_sampling.sample(st, k, 1, UNIFORM)
            return jnp.mean(w * _peaked(t))
        return jax.vmap(one)(keys)

    uniform, weighted = estimate(time_sampling.init(32)), estimate(state)
    exact = 300.0 * 0.08 * np.sqrt(2 * np.pi) + 2.5
    for e in (uniform, weighted):
        assert abs(float(e.mean()) - exact) < 4 * float(e.std()) / np.sqrt(e.size)
    assert float(weighted.var()) < float(uniform.var()) / 5


def _toy_model(t_sampling):
    c = toy2d.get_config("tiny")
    c.unlock()
    c.model.t_sampling = t_sampling
    return Model(c, (2,))


def test_nfdm_with_importance_matches_uniform_until_the_density_moves():
    x = jax.random.normal(jax.random.key(0), (64, 2))
    uniform, importance = _toy_model("uniform"), _toy_model("importance")
    params = importance.init(jax.random.key(1), {"x": x})
    assert set(params) - set(uniform.init(jax.random.key(1), {"x": x})) == {"t_density"}
    key = jax.random.key(2)
    (lu, _), (li, (_, state)) = (uniform.loss(params, {"x": x}, key),
                                  importance.loss_and_stats(params, {"x": x}, key))
    np.testing.assert_allclose(float(li), float(lu), rtol=1e-6)
    assert float(state["t_density"]["weight"].sum()) == pytest.approx(64.0)
    # Evaluation's per-example terms ignore the density.
    skewed = params | {"t_density": {"sum": jnp.arange(32.0) ** 4, "weight": jnp.ones(32)}}
    np.testing.assert_array_equal(importance.per_example(skewed, {"x": x}, key)["total"],
                                  uniform.per_example(params, {"x": x}, key)["total"])
    assert float(importance.loss(skewed, {"x": x}, key)[0]) != float(lu)


def test_importance_sampling_is_validated_by_name():
    for field, value, match in (("t_sampling", "adaptive", "t_sampling='adaptive'"),
                                ("t_sampling_uniform", 0.0, "t_sampling_uniform=0.0"),
                                ("t_sampling_decay", 1.0, "t_sampling_decay=1.0"),
                                ("t_sampling_bins", 0, "t_sampling_bins=0")):
        c = toy2d.get_config("tiny")
        c.unlock()
        c.model.t_sampling = "importance"
        c.model[field] = value
        with pytest.raises(ValueError, match=match):
            Model(c, (2,))
    c = toy2d.get_config("tiny,ot")
    c.unlock()
    c.model.t_sampling = "importance"
    with pytest.raises(ValueError, match="'ot' objective"):
        Model(c, (2,))
