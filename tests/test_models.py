"""Every model builds from a config, initialises, and gives a finite loss and metrics;
accessors return plain callables with the documented shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import toy2d
from nfdm_jax import forward
from nfdm_jax.models import MODELS, Model
from nfdm_jax.train import validation

VARIANTS = {  # model -> config edits on the 2-D toy
    "nfdm": {},
    "nfdm_ot": {"model.name": "nfdm_ot", "model.volatility_base": "straight_matched",
                "model.curvature_weight": 0.1},
    "nfbm": {"model.name": "nfbm", "model.obstacle_weight": 1.0,
             "model.volatility_base": "delta_matched"},
    "vdm": {"model.name": "vdm", "model.volatility": "vp_matching",
            "model.parameterization": "eps"},
    "vdm_learned": {"model.name": "vdm_learned", "model.volatility": "vp_matching"},
    "flow_matching": {"model.name": "flow_matching", "model.volatility": "delta_matched"},
    "nfdm_frozen": {"model.name": "nfdm_frozen", "model.volatility": "neural_matched"},
}


def validate(config):
    """The one validator, as an entry path calls it, for 2-D examples."""
    validation.check_config(config, jax.devices()[:1])
    validation.check_model_shape(config, (2,))


def config_for(edits):
    c = toy2d.get_config("tiny")
    c.unlock()
    for k, v in edits.items():
        group, field = k.split(".")
        c[group][field] = v
    return c


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_model_loss_and_accessors(name):
    model = Model(config_for(VARIANTS[name]), (2,))
    key = jax.random.PRNGKey(0)
    batch = {"x": jax.random.normal(key, (8, 2))}
    if name == "nfbm":
        batch["x1"] = jax.random.normal(jax.random.PRNGKey(1), (8, 2)) + 3.0
    params = model.init(key, batch)
    assert set(params) == {"forward", "predictor", "volatility", "gamma"}
    assert bool(params["forward"]) == (name in ("nfdm", "nfdm_ot", "nfbm"))
    assert bool(params["forward"]) == MODELS[name].forward_net
    assert bool(params["gamma"]) == (name == "vdm_learned")

    loss, metrics = jax.jit(model.loss)(params, batch, key)
    assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    assert {"loss", "total", "bpd"} <= set(metrics)
    grads = jax.grad(lambda p: model.loss(p, batch, key, True, key)[0])(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))

    x1 = model.condition(batch)
    t = jnp.full((8,), 0.3)
    mu, log_sigma = model.forward_fn(params, x1)(batch["x"], t)
    assert mu.shape == log_sigma.shape == (8, 2)
    assert model.predictor_fn(params, x1)(batch["x"], t).shape == (8, 2)
    assert model.volatility_fn(params)(t).shape == (8,)
    assert model.drift_fn(params, x1)(batch["x"], t).shape == (8, 2)


def test_forward_sigma_base_learns_only_the_mean():
    x, t = jax.random.normal(jax.random.key(0), (8, 2)), jnp.full((8,), 0.4)
    learned, base = (Model(config_for({"model.forward_sigma": v}), (2,))
                     for v in ("learned", "base"))
    params = learned.init(jax.random.key(1), {"x": x})
    # Off the zero-initialised output layer, so that the network moves both μ and σ.
    leaves, tree = jax.tree.flatten(params["forward"])
    params["forward"] = jax.tree.unflatten(tree, [
        p + 0.1 * jax.random.normal(jax.random.key(i), p.shape) for i, p in enumerate(leaves)])
    mu_l, ls_l = learned.forward_fn(params)(x, t)
    mu_b, ls_b = base.forward_fn(params)(x, t)
    np.testing.assert_array_equal(mu_b, mu_l)
    np.testing.assert_allclose(ls_b, 0.6 * np.log(learned.m.delta), rtol=1e-6)
    assert float(jnp.max(jnp.abs(ls_l - ls_b))) > 1e-3
    with pytest.raises(ValueError, match="forward_sigma='fixed'"):
        validate(config_for({"model.forward_sigma": "fixed"}))
    with pytest.raises(ValueError, match="not model.name='nfbm'"):
        validate(config_for({**VARIANTS["nfbm"], "model.forward_sigma": "base"}))


def test_nfdm_ot_reports_the_nelbo_as_bpd_and_starts_on_the_straight_path():
    """Its objective is the NELBO + λ ‖d²z/dt²‖²; ``bpd`` is the NELBO's alone, and the
    untrained process that scales its predictor is the straight path."""
    model = Model(config_for(VARIANTS["nfdm_ot"]), (2,))
    key = jax.random.PRNGKey(0)
    batch = {"x": jax.random.normal(key, (8, 2))}
    params = model.init(key, batch)
    per = model.per_example(params, batch, key)
    assert float(jnp.min(per["curvature"])) > 0
    np.testing.assert_allclose(per["total"], per["diff"] + per["rec"] + per["prior"]
                               + per["curvature"], rtol=1e-6)
    nelbo_bits = (per["diff"] + per["rec"] + per["prior"]) / (2 * np.log(2.0))
    np.testing.assert_allclose(per["bpd"], nelbo_bits, rtol=1e-6)
    t = jnp.linspace(0.0, 1.0, 8)
    straight = forward.straight_forward(model.m.delta)(batch["x"], t)
    for got, want in zip(model.base_fn(params)(batch["x"], t), straight):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # σ held by default: the trained process keeps the straight path's σ(t), only μ moves.
    np.testing.assert_allclose(model.forward_fn(params)(batch["x"], t)[1], straight[1],
                               rtol=1e-6, atol=1e-7)


def test_forward_sigma_defaults_per_model():
    """NFDM and NFDM-OT hold σ unless asked (issue #9, reports/few_step); the bridge learns
    it (the paper's)."""
    defaults = {name: Model(config_for(VARIANTS[name]), (2,)).forward_sigma
                for name in ("nfdm", "nfdm_ot", "nfbm")}
    assert defaults == {"nfdm": "base", "nfdm_ot": "base", "nfbm": "learned"}
    assert Model(config_for({"model.forward_sigma": "learned"}), (2,)).forward_sigma == "learned"
    ot = {**VARIANTS["nfdm_ot"], "model.forward_sigma": "learned"}
    assert Model(config_for(ot), (2,)).forward_sigma == "learned"
    assert toy2d.get_config("tiny,learned_sigma").model.forward_sigma == "learned"


def test_invalid_combinations_are_named():
    with pytest.raises(ValueError, match="volatility='zero'"):
        validate(config_for({"model.volatility": "zero"}))
    with pytest.raises(ValueError, match="vp_matching"):
        validate(config_for({"model.volatility": "vp_matching"}))
    with pytest.raises(ValueError, match="model.name='bogus'"):
        validate(config_for({"model.name": "bogus"}))


def test_forward_network_time_scale_comes_from_the_config():
    model = Model(config_for({"net.forward_time_scale": 3.0}), (2,))
    assert model.forward_net.time_scale == 3.0 and model.predictor_net.time_scale == 1000.0


def test_image_model_conventions():
    from experiments import cifar10

    c = cifar10.get_config("tiny")
    pixels = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)), jnp.uint8)
    model = Model(c, (8, 8, 3))
    x = model.preprocess(pixels, jax.random.PRNGKey(0))
    np.testing.assert_allclose(x, (2 * pixels.astype(np.float32) + 1) / 256 - 1)
    assert model.log_jacobian == 0.0 and model.dim == 192
    assert model.forward_net.time_scale == c.net.forward_time_scale == 1.0


def test_every_model_of_the_table_is_tested():
    assert set(MODELS) == set(VARIANTS)


def test_validate_rules_come_from_the_table():
    with pytest.raises(ValueError, match="parameterization='eps' is not allowed for nfdm"):
        validate(config_for({"model.parameterization": "eps"}))
    c = config_for({})
    c.model.data_mean = None
    with pytest.raises(ValueError, match="data_mean"):
        validate(c)
    with pytest.raises(ValueError, match="3 values"):
        validate(config_for({"model.data_mean": (0.0, 0.0, 0.0)}))


def test_nfdm_starts_at_the_linear_posterior_mean_and_frozen_is_the_untrained_process():
    """With a zero network the edm predictor is the closed-form Gaussian posterior mean of
    the untrained process, for NFDM and its :frozen control alike; the
    frozen model has no forward parameters and its process is μ = (1 − t) x, σ = δ^(1−t)."""
    mean, std = (0.5, -1.0), (2.0, 0.5)
    edits = {"model.data_mean": mean, "model.data_std": std}
    key = jax.random.PRNGKey(0)
    batch = {"x": jax.random.normal(key, (8, 2))}
    z = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (8, 2))
    t = jnp.linspace(0.0, 1.0, 8)
    a, s = 1.0 - t[:, None], 0.01 ** (1.0 - t[:, None])
    m, v = np.array(mean)[None], np.array(std)[None] ** 2
    posterior = m + a * v * (z - a * m) / (a ** 2 * v + s ** 2)
    for name in ("nfdm", "nfdm_frozen"):
        model = Model(config_for({**VARIANTS[name], **edits}), (2,))
        params = model.init(key, batch)
        params["predictor"] = jax.tree.map(jnp.zeros_like, params["predictor"])  # NN ≡ 0
        np.testing.assert_allclose(model.predictor_fn(params)(z, t), posterior, rtol=1e-5,
                                   atol=1e-5)
    mu, log_sigma = model.forward_fn(params)(batch["x"], t)
    np.testing.assert_allclose(mu, (1.0 - t[:, None]) * batch["x"], rtol=1e-6)
    np.testing.assert_allclose(log_sigma, np.broadcast_to((1.0 - t[:, None]) * np.log(0.01),
                                                          (8, 2)), rtol=1e-6)
    grads = jax.grad(lambda p: model.loss(p, batch, key)[0])(params)
    assert not grads["forward"] and model.volatility_fn(params)(t).shape == (8,)


@pytest.mark.parametrize("edits", [
    {"model.name": "vdm"},
    {"model.name": "vdm_learned"},
], ids=["linear", "learned"])
def test_vp_nelbo_with_exact_predictor_is_the_closed_form_nll(edits, x64, oracle):
    """Gaussian data x ~ N(m, S) (the ``oracle`` fixture's m, S): VP models with the
    config's γ_min = −13.3 and δ = 0.01. The decoder is the schedule's own, so with the
    exact posterior-mean predictor and vp_matching g the NELBO equals
    −log N(x; m, S + 2 σ_0²/α_0² I) up to KL(q(z_1) ‖ N(0, I)) ≈ 1e-3 (a δ-width decoder
    would add ≈ D (log(δ/σ_0) − ½) ≈ 4.6 nats)."""
    DIM, EIGS, MEAN, Q = oracle.dim, oracle.eigs, oracle.mean, oracle.q

    model = Model(config_for({**edits, "model.volatility": "vp_matching",
                              "model.parameterization": "eps",
                              "model.data_mean": (0.0,) * DIM, "model.data_std": (1.0,) * DIM}),
                  (DIM,))
    key = jax.random.PRNGKey(0)
    params = model.init(key, {"x": jnp.zeros((4, DIM))})
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    gamma = model.gamma_fn(params)
    cov = (Q * EIGS) @ Q.T

    def exact(z, t):
        a2 = jax.nn.sigmoid(-gamma(t))[:, None]
        a = jnp.sqrt(a2)
        return MEAN + ((z - a * MEAN) @ Q * (a * EIGS / (a2 * EIGS + (1.0 - a2)))) @ Q.T

    n = 200_000
    x = MEAN + jax.random.normal(jax.random.PRNGKey(5), (n, DIM), jnp.float64) @ \
        jnp.linalg.cholesky(cov).T
    from nfdm_jax import losses
    total = jax.jit(lambda x, k: losses.nelbo(
        model.forward_fn(params), exact, model.volatility_fn(params), x, k,
        decoder_nll=model.decoder_fn(params)).total)(x, jax.random.PRNGKey(6))
    g0 = gamma(jnp.zeros(()))
    width2 = 2.0 * jnp.exp(g0)                     # 2 σ_0² / α_0²
    full = cov + width2 * jnp.eye(DIM)
    diff = x - MEAN
    nll = 0.5 * (jnp.sum(diff @ jnp.linalg.inv(full) * diff, -1)
                 + jnp.linalg.slogdet(full)[1] + DIM * np.log(2 * np.pi))
    gap = total - nll
    se = float(jnp.std(gap)) / np.sqrt(n)
    assert -4 * se < float(jnp.mean(gap)) < 4 * se + 0.05, (float(jnp.mean(gap)), se)


@pytest.mark.parametrize("variant", ["", "vdm"])
def test_fourier_features_widen_the_predictor_input_only(variant):
    """digits.py's features: the U-Net takes 1 + 2·4 input channels and returns 1."""
    from experiments import digits

    c = digits.get_config(",".join(v for v in (variant, "tiny") if v))
    assert tuple(c.model.fourier_exponents) == (4, 5, 6, 7)
    model = Model(c, (8, 8, 1))
    batch = {"x": jnp.zeros((2, 8, 8, 1), jnp.uint8)}
    # Shapes only (tracing, no compile): the features' maths is tested in test_forward.
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
    assert params["predictor"]["in_conv"]["kernel"].shape[-2] == 9
    assert params["forward"] == {} or params["forward"]["in_conv"]["kernel"].shape[-2] == 1
    z = jnp.zeros((2, 8, 8, 1))
    x_hat = jax.eval_shape(lambda p: model.predictor_fn(p)(z, jnp.full((2,), 0.5)), params)
    assert x_hat.shape == (2, 8, 8, 1)


def test_fourier_features_need_a_predictor_that_takes_them():
    from experiments import digits

    c = digits.get_config("tiny")
    c.unlock()
    c.model.parameterization = "preconditioned"
    with pytest.raises(ValueError, match="fourier_exponents.*'edm' or 'eps'"):
        validation.check_config(c, jax.devices()[:1])
    with pytest.raises(ValueError, match="fourier_exponents is for images"):
        validate(config_for({"model.fourier_exponents": (4,)}))
