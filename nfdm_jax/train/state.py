"""The training state: one pytree holding everything a checkpoint must restore."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
    """Step counter, parameters, their EMA and the optimiser state.

    ``step`` is an int32 scalar array (not a Python int) so that the jitted step can
    derive its PRNG key from it without retracing.
    """

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: optax.OptState
