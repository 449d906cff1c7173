"""Test session setup (8 fake CPU devices, strict rank promotion, compilation cache) and the
helpers tests share, as fixtures: ``toy_config`` and ``sharding_tolerance`` for training
tests, ``core_nets`` (plain-jnp networks) and ``oracle`` (a Gaussian with closed forms).

XLA_FLAGS must be set before JAX initialises its backend, hence at import time here.
"""
import os
import types

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="module")
def x64():
    """Float64 for the whole module (the maths tests compare against closed forms)."""
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------- training


def _toy_config(**overrides):
    """The tiny 2-D config with dotted-path overrides, e.g. ``{"train.num_steps": 6}``
    (top-level fields such as ``seed`` too)."""
    from experiments import toy2d

    c = toy2d.get_config("tiny")
    c.unlock()
    c.mesh.shard_min_size = 0  # shard every divisible parameter when mesh.model > 1
    for k, v in overrides.items():
        *path, leaf = k.split(".")
        target = c
        for p in path:
            target = target[p]
        target[leaf] = v
    c.lock()
    return c


@pytest.fixture(scope="session")
def toy_config():
    """``toy_config(**overrides)`` → a locked tiny 2-D config."""
    return _toy_config


@pytest.fixture(scope="session")
def sharding_tolerance():
    """(rtol, atol) for parameters after 3 steps on different device layouts.

    Float32 reductions over differently sharded batches reorder sums: a few ulps per step,
    amplified by 3 Adam steps on ~1e3-scale losses. Parameters move by ~lr = 1e-3 per step.
    Adam divides each gradient by its own running RMS, so a weight whose gradient is pure
    reduction-order noise (the volatility net's first layers, behind a zero-initialised
    output layer) still moves by ~lr, in a direction set by the device layout's summation
    order: hence atol 2e-4 (20 % of one step), not 1e-5; how far such a weight drifts depends
    on the batches (with grain's shuffle order it reaches 1.0e-4 on the 4×2 mesh). A real
    sharding bug (wrong averaging, a dropped shard) changes every parameter by O(lr).
    """
    return 1e-4, 2e-4


# ---------------------------------------------------------------- plain-jnp networks


def _init_mlp(key, sizes, scale=0.5):
    """Parameters of an MLP with the given layer sizes, non-zero everywhere."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": scale * jax.random.normal(k, (a, b)) / jnp.sqrt(a),
             "b": 0.1 * jax.random.normal(jax.random.fold_in(k, 1), (1, b))}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def _mlp(params, h):
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]


def _with_time(x, t):
    """[B, D] and [B] → [B, D + 2] with a smooth time embedding."""
    emb = jnp.stack([jnp.sin(3.0 * t), jnp.cos(2.0 * t)], axis=-1)
    return jnp.concatenate([x, emb], axis=-1)


def _forward_net(params):
    """(x, t) → (m̄, l̄) for x of shape [B, D]."""
    def net(x, t):
        return jnp.split(_mlp(params, _with_time(x, t)), 2, axis=-1)
    return net


def _init_all(key, dim, hidden=16):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"forward": _init_mlp(k1, [dim + 2, hidden, 2 * dim]),
            "predictor": _init_mlp(k2, [dim + 2, hidden, dim]),
            "volatility": _init_mlp(k3, [2, hidden, 1])}


@pytest.fixture(scope="session")
def core_nets():
    """Plain-jnp networks (no Flax) for testing the pure core, as a user's own code would be:
    ``init_mlp``, ``mlp``, ``forward_net`` ((x, t) → (m̄, l̄)), ``predictor_net``
    ((z, t) → [B, D]), ``volatility_net`` (t → raw [B]) and ``init_all``."""
    return types.SimpleNamespace(
        init_mlp=_init_mlp, mlp=_mlp, with_time=_with_time, forward_net=_forward_net,
        predictor_net=lambda params: (lambda z, t: _mlp(params, _with_time(z, t))),
        volatility_net=lambda params: (lambda t: _mlp(params, jnp.stack([t, t * t], -1))[:, 0]),
        init_all=_init_all)


# ---------------------------------------------------------------- Gaussian oracle


@pytest.fixture(scope="session")
def oracle():
    """Data x ~ N(m, S), S = Q diag(eigs) Qᵀ (D = 3, a fixed rotation so nothing is
    isotropic), a VP process with the linear log-SNR schedule and the exact posterior-mean
    predictor. Then z_t ~ N(α_t m, α_t² S + σ_t² I), and f(z, t, x̂(z, t)) is the exact
    probability-flow drift. Fields: gamma, mean [1, D], eigs [1, D], q [D, D], dim,
    alpha2_sigma2(t), exact_predictor(z, t), marginal(t, extra_var=0)."""
    from nfdm_jax import schedules

    gamma = schedules.linear_gamma()
    mean = np.array([[0.3, -0.5, 1.0]])
    eigs = np.array([[0.2, 0.5, 1.0]])
    q = np.linalg.qr(np.array([[1.0, 0.4, -0.3], [0.2, 1.0, 0.5], [-0.6, 0.1, 1.0]]))[0]
    dim = 3

    def alpha2_sigma2(t):
        g = gamma(t)
        return jax.nn.sigmoid(-g), jax.nn.sigmoid(g)

    def exact_predictor(z, t):
        """E[x | z_t] = m + α S (α² S + σ² I)⁻¹ (z − α m), in S's eigenbasis."""
        a2, s2 = alpha2_sigma2(t)
        a2, s2 = a2[:, None], s2[:, None]
        a = jnp.sqrt(a2)
        return mean + ((z - a * mean) @ q * (a * eigs / (a2 * eigs + s2))) @ q.T

    def marginal(t, extra_var=0.0):
        """(mean [D], cov [D, D]) of q(z_t), plus ``extra_var`` I."""
        a2, s2 = alpha2_sigma2(jnp.full((), t))
        return (jnp.sqrt(a2) * mean[0],
                a2 * (q * eigs) @ q.T + (s2 + extra_var) * jnp.eye(dim))

    return types.SimpleNamespace(gamma=gamma, mean=mean, eigs=eigs, q=q, dim=dim,
                                 alpha2_sigma2=alpha2_sigma2, exact_predictor=exact_predictor,
                                 marginal=marginal)
