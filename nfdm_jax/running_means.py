"""Exponentially weighted means on K fixed slots (grid times or bins of t).

Each update adds a batch's values to the slots with per-example weights and decays the
past; a slot's mean is its decayed sum over its decayed weight, so it stays put while no
example reaches it. State is a dict of two ``[K]`` arrays (``"sum"``, ``"weight"``), a pytree
that checkpoints and shards like parameters. Used by :mod:`nfdm_jax.noise_stats` and
:mod:`nfdm_jax.time_sampling`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
RunningMeans = dict[str, Array]


def init(num_slots: int) -> RunningMeans:
    """No slot seen yet."""
    zeros = jnp.zeros((num_slots,), jnp.float32)
    return {"sum": zeros, "weight": zeros}


def update(state: RunningMeans, weights: Array, values: Array, decay: float) -> RunningMeans:
    """Folds ``values`` ``[B]`` in with ``weights`` ``[B, K]`` (example to slot), the past
    weighted by ``decay`` ∈ [0, 1). Gradients do not flow into the state."""
    values = jax.lax.stop_gradient(values)
    return {"sum": decay * state["sum"] + jnp.einsum("bk,b->k", weights, values),
            "weight": decay * state["weight"] + jnp.sum(weights, axis=0)}


def read(state: RunningMeans) -> tuple[Array, Array]:
    """(means ``[K]``, 0 where unseen; seen ``[K]``, bool), without gradient."""
    state = jax.lax.stop_gradient(state)
    seen = state["weight"] > 0
    return jnp.where(seen, state["sum"] / jnp.where(seen, state["weight"], 1.0), 0.0), seen
