"""Small array helpers shared by the method's modules."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def bcast_time(t: Array, x: Array) -> Array:
    """Reshapes per-example ``t`` ``[B]`` to broadcast against ``x`` ``[B, *D]``."""
    return jnp.reshape(t, t.shape + (1,) * (x.ndim - t.ndim))


def sum_per_example(v: Array) -> Array:
    """Sums ``[B, *D]`` over all but the leading axis → ``[B]``."""
    return jnp.sum(jnp.reshape(v, (v.shape[0], -1)), axis=-1)
