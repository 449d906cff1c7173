"""Every model builds from a config, initialises, and gives a finite loss and metrics;
accessors return plain callables with the documented shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import toy2d
from nfdm_jax.models import Model

VARIANTS = {  # model -> config edits on the 2-D toy
    "nfdm": {},
    "nfdm_ot": {"model.name": "nfdm_ot", "model.volatility": "zero",
                "model.curvature_weight": 0.1},
    "nfbm": {"model.name": "nfbm", "model.obstacle_weight": 1.0,
             "model.volatility_base": "delta_matched"},
    "vdm": {"model.name": "vdm", "model.volatility": "vp_matching",
            "model.parameterization": "eps"},
    "vdm_learned": {"model.name": "vdm_learned", "model.volatility": "vp_matching"},
    "flow_matching": {"model.name": "flow_matching", "model.volatility": "delta_matched"},
}


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


def test_invalid_combinations_are_named():
    with pytest.raises(ValueError, match="volatility='zero'"):
        Model(config_for({"model.volatility": "zero"}), (2,))
    with pytest.raises(ValueError, match="vp_matching"):
        Model(config_for({"model.volatility": "vp_matching"}), (2,))
    with pytest.raises(ValueError, match="model.name='bogus'"):
        Model(config_for({"model.name": "bogus"}), (2,))


def test_image_model_conventions():
    from experiments import cifar10

    c = cifar10.get_config("tiny")
    pixels = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)), jnp.uint8)
    model = Model(c, (8, 8, 3))
    x = model.preprocess(pixels, jax.random.PRNGKey(0))
    np.testing.assert_allclose(x, (2 * pixels.astype(np.float32) + 1) / 256 - 1)
    assert model.log_jacobian == 0.0 and model.dim == 192
