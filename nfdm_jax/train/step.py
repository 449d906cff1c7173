"""The train and eval steps as pure functions, and their jitted, sharded forms.

``train_step(state, batches) -> (state, metrics)`` runs ``steps_per_dispatch`` optimiser
steps in one ``lax.scan`` over batches stacked on a leading axis; metrics are averaged
over those steps. Step ``s`` draws its randomness from ``fold_in(base_key, s)``, so a
run is reproducible and resumable from any checkpoint, whatever the device count.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from nfdm_jax.models import Batch, Model
from nfdm_jax.train import sharding
from nfdm_jax.train.optimizer import learning_rate, make_optimizer
from nfdm_jax.train.state import TrainState

Metrics = dict[str, jax.Array]
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]


def init_state(model: Model, optimizer: optax.GradientTransformation, key: jax.Array,
               example: Batch) -> TrainState:
    """A fresh state; EMA starts at the initial parameters."""
    params = model.init(key, example)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=optimizer.init(params))


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
    """min(decay, (1 + s) / (10 + s)): the EMA tracks the parameters closely early on
    instead of averaging in the random initialisation for ~1/(1 − decay) steps."""
    s = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + s) / (10.0 + s))


def make_train_step(model: Model, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, base_key: jax.Array, ema: float) -> TrainStep:
    """The pure train step over ``batches`` ``{field: [steps_per_dispatch, B, ...]}``."""

    def one_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        loss_key, dropout_key = jax.random.split(jax.random.fold_in(base_key, state.step))
        grad_fn = jax.value_and_grad(model.loss, has_aux=True)
        (_, metrics), grads = grad_fn(state.params, batch, loss_key, True, dropout_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        d = ema_decay(state.step, ema)
        ema_params = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
        metrics |= {"grad_norm": optax.tree.norm(grads),
                    "param_norm": optax.tree.norm(params),
                    "lr": schedule(state.step)}
        # Per group: which network's gradient sets the global clipping factor.
        metrics |= {f"grad_norm_{g}": optax.tree.norm(v) for g, v in grads.items()
                    if jax.tree.leaves(v)}
        return TrainState(state.step + 1, params, ema_params, opt_state), metrics

    def train_step(state: TrainState, batches: Batch) -> tuple[TrainState, Metrics]:
        state, metrics = jax.lax.scan(one_step, state, batches)
        return state, jax.tree.map(jnp.mean, metrics)

    return train_step


class Training(NamedTuple):
    """The one training wiring of a config: its model, optimizer and learning-rate schedule,
    with the fresh state and the pure train step built from them. The loop, the reports
    (which ``jax.vmap`` it over seeds) and the benchmark all train through it."""

    model: Model
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    ema: float

    def init(self, key: jax.Array, example: Batch) -> TrainState:
        """A fresh state for batches shaped like ``example``."""
        return init_state(self.model, self.optimizer, key, example)

    def step(self, base_key: jax.Array) -> TrainStep:
        """The pure train step (:func:`make_train_step`) drawing from ``base_key``."""
        return make_train_step(self.model, self.optimizer, self.schedule, base_key, self.ema)


def training(config: ml_collections.ConfigDict, model: Model) -> Training:
    """:class:`Training` from ``config.optim`` over ``config.train.num_steps`` steps."""
    steps = config.train.num_steps
    return Training(model, make_optimizer(config.optim, steps), learning_rate(config.optim, steps),
                    config.optim.ema_decay)


def jit_train_step(step: TrainStep, mesh: Mesh, state_shardings: Any) -> Callable:
    """``jax.jit`` with explicit shardings; the state is donated (updated in place)."""
    return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh, True)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
