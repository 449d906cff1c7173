"""Plain-jnp networks (no Flax) for testing the pure core, as a user's own code would be."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def init_mlp(key: jax.Array, sizes: list[int], scale: float = 0.5) -> list[dict]:
    """Parameters of an MLP with the given layer sizes, non-zero everywhere."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": scale * jax.random.normal(k, (a, b)) / jnp.sqrt(a),
             "b": 0.1 * jax.random.normal(jax.random.fold_in(k, 1), (1, b))}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def mlp(params: list[dict], h: jax.Array) -> jax.Array:
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]


def with_time(x: jax.Array, t: jax.Array) -> jax.Array:
    """[B, D] and [B] → [B, D + 2] with a smooth time embedding."""
    emb = jnp.stack([jnp.sin(3.0 * t), jnp.cos(2.0 * t)], axis=-1)
    return jnp.concatenate([x, emb], axis=-1)


def forward_net(params: list[dict]):
    """(x, t) → (m̄, l̄) for x of shape [B, D]."""

    def net(x, t):
        out = mlp(params, with_time(x, t))
        return jnp.split(out, 2, axis=-1)

    return net


def predictor_net(params: list[dict]):
    """(z, t) → [B, D]."""
    return lambda z, t: mlp(params, with_time(z, t))


def volatility_net(params: list[dict]):
    """t [B] → raw [B]."""
    return lambda t: mlp(params, jnp.stack([t, t * t], axis=-1))[:, 0]


def init_all(key: jax.Array, dim: int, hidden: int = 16) -> dict:
    k1, k2, k3 = jax.random.split(key, 3)
    return {"forward": init_mlp(k1, [dim + 2, hidden, 2 * dim]),
            "predictor": init_mlp(k2, [dim + 2, hidden, dim]),
            "volatility": init_mlp(k3, [2, hidden, 1])}
