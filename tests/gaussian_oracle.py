"""A Gaussian oracle shared by the sampler and likelihood tests.

Data x ~ N(m, S) with S = Q diag(EIGS) Qᵀ (D = 3, a fixed rotation so nothing is isotropic),
a VP process with the linear log-SNR schedule, and the exact posterior-mean predictor.
Then z_t ~ N(α_t m, α_t² S + σ_t² I), and f(z, t, x̂(z, t)) is the exact probability-flow drift.
"""
import jax
import jax.numpy as jnp
import numpy as np

from nfdm_jax import schedules

GAMMA = schedules.linear_gamma()
MEAN = np.array([[0.3, -0.5, 1.0]])
EIGS = np.array([[0.2, 0.5, 1.0]])
Q = np.linalg.qr(np.array([[1.0, 0.4, -0.3], [0.2, 1.0, 0.5], [-0.6, 0.1, 1.0]]))[0]
DIM = 3


def alpha2_sigma2(t):
    g = GAMMA(t)
    return jax.nn.sigmoid(-g), jax.nn.sigmoid(g)


def exact_predictor(z, t):
    """E[x | z_t] = m + α S (α² S + σ² I)⁻¹ (z − α m), in S's eigenbasis."""
    a2, s2 = alpha2_sigma2(t)
    a2, s2 = a2[:, None], s2[:, None]
    a = jnp.sqrt(a2)
    return MEAN + ((z - a * MEAN) @ Q * (a * EIGS / (a2 * EIGS + s2))) @ Q.T


def marginal(t, extra_var=0.0):
    """(mean [D], cov [D, D]) of q(z_t), plus ``extra_var`` I."""
    a2, s2 = alpha2_sigma2(jnp.full((), t))
    return jnp.sqrt(a2) * MEAN[0], a2 * (Q * EIGS) @ Q.T + (s2 + extra_var) * jnp.eye(DIM)
