"""Small array helpers shared by the method's modules, and the bound on dispatch look-ahead."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

# JAX's CPU runtime admits 32 executions per device at a time, and a multi-device program
# takes its slot on each device when that device's launch runs, in no fixed order. With more
# than 32 in flight, later programs (waiting on inputs) can hold every slot of one device
# while an earlier one with a collective waits for its launch there: every device then waits
# for ever (measured: a chain of data-parallel steps on 4 CPU devices hangs at 40 in flight,
# not at 32). Loops that dispatch without fetching wait on the output ``MAX_IN_FLIGHT``
# dispatches back: already done on an accelerator, and free.
MAX_IN_FLIGHT = 16


def bound_in_flight(outputs: Sequence[Any], limit: int = MAX_IN_FLIGHT) -> None:
    """Blocks until ``outputs[-limit - 1]`` is ready (``outputs``: one entry per dispatch,
    oldest first), so that at most ``limit`` dispatches are outstanding."""
    if len(outputs) > limit:
        jax.block_until_ready(outputs[-limit - 1])


def bcast_time(t: Array, x: Array) -> Array:
    """Reshapes per-example ``t`` ``[B]`` to broadcast against ``x`` ``[B, *D]``."""
    return jnp.reshape(t, t.shape + (1,) * (x.ndim - t.ndim))


def sum_per_example(v: Array) -> Array:
    """Sums ``[B, *D]`` over all but the leading axis → ``[B]``."""
    return jnp.sum(jnp.reshape(v, (v.shape[0], -1)), axis=-1)
