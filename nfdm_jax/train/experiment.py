"""The experiment object: everything built from a valid config before anything compiles.

:func:`setup` opens the data (unless given), builds the mesh, the model and the training
wiring (:func:`nfdm_jax.train.step.training`) and lays out the state's shardings. It does
not validate: each entry path (``experiments/run.py``, the reports, the benchmark) calls
:mod:`nfdm_jax.train.validation` once, before this.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from nfdm_jax.data import DatasetSpec, make_datasets
from nfdm_jax.models import Model
from nfdm_jax.train import sharding, step as steps
from nfdm_jax.train.state import TrainState

# Independent streams derived from config.seed.
INIT, TRAIN, EVAL, SAMPLE = range(4)


@dataclasses.dataclass
class Experiment:
    """Everything built from a config before compiling."""

    config: ml_collections.ConfigDict
    data: DatasetSpec
    mesh: jax.sharding.Mesh
    model: Model
    training: steps.Training
    abstract_state: Any          # TrainState of ShapeDtypeStructs
    state_shardings: Any         # TrainState of NamedShardings
    example: dict[str, np.ndarray]

    def key(self, stream: int) -> jax.Array:
        """The PRNG key of ``stream`` (:data:`INIT`, :data:`TRAIN`, ...) under config.seed."""
        return jax.random.fold_in(jax.random.PRNGKey(self.config.seed), stream)

    @property
    def eval_batch_size(self) -> int:
        return self.config.train.eval_batch_size or self.config.train.batch_size


def setup(config: ml_collections.ConfigDict,
          devices: Optional[Sequence[jax.Device]] = None,
          data: Optional[DatasetSpec] = None) -> Experiment:
    """The experiment of a validated ``config`` on ``devices`` (default: all); ``data``: the
    datasets if already opened (by :func:`nfdm_jax.train.validation.validate_run`)."""
    mesh = sharding.make_mesh(config, devices)
    data = data if data is not None else make_datasets(config.data, config.seed)
    model = Model(config, data.shape)
    training = steps.training(config, model)
    example = {f: np.stack([s[0]["x"]]) for f, s in data.train.items()}
    abstract = jax.eval_shape(lambda key: training.init(key, example), jax.random.PRNGKey(0))
    shardings = sharding.state_shardings(config, mesh, abstract)
    return Experiment(config, data, mesh, model, training, abstract, shardings, example)


def create_state(exp: Experiment) -> TrainState:
    """A fresh state, created directly in its sharded layout."""
    init = lambda key: exp.training.init(key, exp.example)  # noqa: E731
    return jax.jit(init, out_shardings=exp.state_shardings)(exp.key(INIT))
