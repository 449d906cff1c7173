"""Building blocks of the fidelity report (``experiments/fidelity_report.py``).

Closed-form 2-D densities, batches from fixed pools, and the measurements the report
takes of a trained model: the NELBO with many t-samples per point, the exact ODE
log-likelihood, the straightness of generated ODE paths and sample quality against the
number of function evaluations.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nfdm_jax import drifts, evaluation, likelihood, sampling
from nfdm_jax.data import ArraySource, eval_batches
from nfdm_jax.data.toy2d import eight_gaussians
from nfdm_jax.metrics.sample_distances import energy_distance
from nfdm_jax.models import Batch, Model, Params

Array = jax.Array
BatchSampler = Callable[[Array], Batch]


# --------------------------------------------------------------------------- densities

class GaussianMixture(NamedTuple):
    """A Gaussian mixture in 2-D with closed-form density.

    ``weights`` ``[K]`` sum to one; ``means`` ``[K, 2]``; ``chols`` ``[K, 2, 2]`` are the
    lower Cholesky factors of the covariances.
    """

    weights: np.ndarray
    means: np.ndarray
    chols: np.ndarray

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` samples ``[n, 2]`` float32."""
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        eps = rng.standard_normal((n, 2))
        return (self.means[k] + np.einsum("nij,nj->ni", self.chols[k], eps)).astype(np.float32)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """log p(x) ``[n]`` in nats (float64), for ``x`` ``[n, 2]``."""
        diff = np.asarray(x, np.float64)[:, None, :] - self.means[None]           # [n, K, 2]
        white = np.linalg.solve(self.chols[None], diff[..., None])[..., 0]      # L⁻¹ (x − m)
        log_det = np.sum(np.log(np.diagonal(self.chols, axis1=1, axis2=2)), axis=-1)
        log_comp = -0.5 * np.sum(white ** 2, -1) - log_det - math.log(2.0 * math.pi)
        return np.logaddexp.reduce(np.log(self.weights) + log_comp, axis=1)


def eight_gaussians_mixture() -> GaussianMixture:
    """The density of ``nfdm_jax.data.toy2d.eight_gaussians``: centres 4·(cos, sin)(k·45°)
    and std 0.5, all divided by √2."""
    angles = np.arange(8) * (np.pi / 4)
    means = 4.0 * np.stack([np.cos(angles), np.sin(angles)], -1) / math.sqrt(2.0)
    chols = np.broadcast_to(0.5 / math.sqrt(2.0) * np.eye(2), (8, 2, 2)).copy()
    return GaussianMixture(np.full(8, 1 / 8), means, chols)


def correlated_pair_mixture() -> GaussianMixture:
    """Two unequal, oppositely correlated Gaussians (weights 0.35 / 0.65)."""
    covs = np.array([[[0.30, 0.25], [0.25, 0.40]], [[0.50, -0.30], [-0.30, 0.35]]])
    return GaussianMixture(np.array([0.35, 0.65]), np.array([[-1.2, -0.8], [1.0, 0.9]]),
                           np.linalg.cholesky(covs))


def sample_density(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """Samples ``[n, 2]`` of a density of :data:`DENSITIES`; the ring comes from the library."""
    if name == "eight_gaussians":
        return eight_gaussians(rng, n).astype(np.float32)
    return DENSITIES[name].sample(rng, n)


DENSITIES: dict[str, GaussianMixture] = {
    "eight_gaussians": eight_gaussians_mixture(),
    "correlated_pair": correlated_pair_mixture(),
}


# --------------------------------------------------------------------------- training

def pool_sampler(pools: dict[str, np.ndarray], batch_size: int) -> BatchSampler:
    """Batches drawn uniformly with replacement from fixed pools, each field independently
    (so a bridge's target ``"x"`` and source ``"x1"`` are unpaired)."""
    device_pools = {k: jnp.asarray(v) for k, v in pools.items()}

    def sample(key: Array) -> Batch:
        keys = jax.random.split(key, len(device_pools))
        return {name: pool[jax.random.randint(k, (batch_size,), 0, pool.shape[0])]
                for k, (name, pool) in zip(keys, sorted(device_pools.items()))}

    return sample


# --------------------------------------------------------------------------- measurements

MeanSE = evaluation.MeanSE


def eval_split(model: Model, source: ArraySource) -> Array:
    """The whole eval split ``source`` in ``model``'s convention ``[N, *D]`` (bin centres for
    discrete data; a fixed key for the dequantized ones), for per-t profiles."""
    return model.preprocess(jnp.asarray(source.take(np.arange(len(source)))["x"]),
                            jax.random.key(0))


def nelbo_per_example(model: Model, params: Params, x: np.ndarray, key: Array,
                      num_t_samples: int, chunk: int = 256) -> dict[str, np.ndarray]:
    """Every per-example NELBO term ``[N]`` in nats, averaged over ``num_t_samples`` draws
    of (t, ε) per point, with t stratified over each point's own draws.

    A thin call into the one evaluator, :func:`nfdm_jax.evaluation.per_example_values`:
    points go through in padded batches of ``chunk``, each tiled ``num_t_samples`` times
    in one call, so ``losses.stratified_times`` over the tiled batch puts one t in each
    of the point's K strata.
    """
    source = ArraySource({"x": np.asarray(x)})
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    return evaluation.per_example_values(model.per_example, params,
                                         eval_batches({"x": source}, chunk, mesh), key,
                                         num_t_samples=num_t_samples, tile=num_t_samples)


def ode_nll(drift: drifts.Drift, x: np.ndarray) -> np.ndarray:
    """−log p_0(x) ``[N]`` in nats by the instantaneous change of variables (exact trace,
    dopri5, rtol = atol = 1e-5), evaluated at the data itself (z_0 = x)."""
    run = jax.jit(lambda xx: likelihood.ode_log_likelihood(drift, xx, trace="exact"))
    return -np.asarray(run(jnp.asarray(x)), np.float64)


class Straightness(NamedTuple):
    """S = E ∫₀¹ ‖v(z_t, t) − (z_1 − z_0)‖² dt along generated ODE paths, and S divided by
    E ‖z_1 − z_0‖² (0 for straight constant-speed paths)."""

    s: float
    relative: float


def straightness(drift: drifts.Drift, z1: Array, num_times: int = 201) -> Straightness:
    """:class:`Straightness` from an adaptive solve (dopri5) saved on ``num_times`` times.

    With t running from 1 to 0 and dz/dt = v, a straight constant-speed path has
    v ≡ z_1 − z_0 (the reverse-time velocity is z_0 − z_1). The t-integral is the
    trapezoid rule on the saved grid.
    """

    @jax.jit
    def run(z1: Array, ts: Array) -> tuple[Array, Array]:
        # ts is an argument, not a constant, so XLA does not constant-fold the drift on it.
        zs = sampling.adaptive_sample(drift, z1, save_ts=ts).trajectory.zs   # [T, B, 2]
        flat = jnp.reshape(zs, (-1, zs.shape[-1]))
        v = jnp.reshape(drift(flat, jnp.repeat(ts, z1.shape[0])), zs.shape)
        chord = z1 - zs[-1]
        dev = jnp.mean(jnp.sum(jnp.square(v - chord[None]), axis=-1), axis=1)   # [T]
        s = jnp.sum(0.5 * (dev[1:] + dev[:-1])) / (num_times - 1)
        return s, jnp.mean(jnp.sum(jnp.square(chord), axis=-1))

    s, chord_sq = jax.device_get(run(z1, jnp.linspace(1.0, 0.0, num_times)))
    return Straightness(float(s), float(s / chord_sq))


def euler_samples(drift: drifts.Drift, z1: Array, nfe: int) -> np.ndarray:
    """Samples z_0 ``[N, 2]`` by Euler's method from t = 1 with ``nfe`` steps."""
    return np.asarray(jax.jit(lambda z: sampling.euler(drift, z, num_steps=nfe))(z1))


def energy(x: np.ndarray, y: np.ndarray) -> float:
    """The library's (V-statistic) squared energy distance, as a float."""
    return float(jax.jit(energy_distance)(jnp.asarray(x), jnp.asarray(y)))


def energy_noise_floor(sample: Callable[[np.random.Generator, int], np.ndarray], n: int,
                       repeats: int, seed: int) -> MeanSE:
    """Mean and spread (std, not SE) of the energy distance between two independent true
    sample sets of size ``n``: the level below which no model can be told apart."""
    rng = np.random.default_rng(seed)
    values = [energy(sample(rng, n), sample(rng, n)) for _ in range(repeats)]
    return MeanSE(float(np.mean(values)), float(np.std(values, ddof=1)))
