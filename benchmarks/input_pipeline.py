"""Input-pipeline benchmark: does the grain input keep ahead of the train step?

    python -m benchmarks.input_pipeline --config=experiments/digits.py [--measure_step]

Times ``nfdm_jax.data.BatchIterator`` (the training path: grain, per-process shard,
prefetch, global ``jax.Array`` assembly) over ``--batches`` dispatches after a warm-up and
reports batches/s. With ``--measure_step`` it also compiles and times the config's real
train step on those batches and prints the ratio: input batches/s ÷ train steps/s (above
1, the input keeps ahead). Datasets that are not on disk (tfds, AFHQ) are replaced by an
in-memory uint8 source of the config's shape and size (``--synthetic`` forces that).
Run from the repository root. One JSON line, then a sentence.
"""
from __future__ import annotations

import json
import time
from typing import Mapping

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from nfdm_jax.data import ArraySource, BatchIterator, DatasetNotFoundError, Source, make_datasets
from nfdm_jax.data.registry import example_shape
from nfdm_jax.train import sharding

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_BATCHES = flags.DEFINE_integer("batches", 200, "Timed dispatches (after 5 warm-up ones).")
_MEASURE_STEP = flags.DEFINE_bool("measure_step", False, "Also time the real train step.")
_SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Use an in-memory source of the shape.")
flags.mark_flag_as_required("config")


def synthetic_sources(config: ml_collections.ConfigDict, size: int = 50_000
                      ) -> dict[str, Source]:
    """Random uint8 images (float32 points for 2-D data) of the config's example shape."""
    shape = example_shape(config.data)
    rng = np.random.default_rng(0)
    if len(shape) == 3:
        x = rng.integers(0, 256, (size,) + shape, dtype=np.uint8)
    else:
        x = rng.normal(size=(size,) + shape).astype(np.float32)
    return {"x": ArraySource({"x": x})}


def input_rate(sources: Mapping[str, Source], config: ml_collections.ConfigDict,
               num_batches: int) -> float:
    """Dispatches per second out of :class:`BatchIterator` (each blocked until on device)."""
    t = config.train
    mesh = sharding.make_mesh(config)
    it = BatchIterator(sources, t.batch_size, mesh, config.seed,
                       steps_per_dispatch=t.steps_per_dispatch)
    try:
        for _ in range(5):
            jax.block_until_ready(next(it))
        start = time.perf_counter()
        for _ in range(num_batches):
            jax.block_until_ready(next(it))
        return num_batches / (time.perf_counter() - start)
    finally:
        it.close()


def step_rate(config: ml_collections.ConfigDict, num_steps: int) -> float:
    """Dispatches per second of the config's compiled train step (median over dispatches)."""
    from nfdm_jax.train import experiment, step as steps, validation

    validation.check_config(config)
    exp = experiment.setup(config)
    state = experiment.create_state(exp)
    fn = steps.jit_train_step(exp.training.step(exp.key(1)), exp.mesh, exp.state_shardings)
    it = BatchIterator(exp.data.train, config.train.batch_size, exp.mesh, config.seed,
                       steps_per_dispatch=config.train.steps_per_dispatch)
    batches = [next(it) for _ in range(num_steps + 1)]
    it.close()
    state, _ = jax.block_until_ready(fn(state, batches[0]))  # compile
    times = []
    for b in batches[1:]:
        start = time.perf_counter()
        state, _ = jax.block_until_ready(fn(state, b))
        times.append(time.perf_counter() - start)
    return 1.0 / float(np.median(times))


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    synthetic = _SYNTHETIC.value
    if not synthetic:
        try:
            sources = make_datasets(config.data, config.seed).train
        except DatasetNotFoundError:
            synthetic = True
    if synthetic:
        sources = synthetic_sources(config)
    record = {"data": config.data.name, "synthetic": synthetic,
              "global_batch": config.train.batch_size,
              "steps_per_dispatch": config.train.steps_per_dispatch,
              "input_batches_per_s": input_rate(sources, config, _BATCHES.value)}
    if _MEASURE_STEP.value:
        record["train_steps_per_s"] = step_rate(config, 20)
        record["input_over_step"] = record["input_batches_per_s"] / record["train_steps_per_s"]
    print(json.dumps(record))
    verdict = ""
    if "input_over_step" in record:
        ahead = record["input_over_step"] > 1.0
        verdict = (f"; the train step runs {record['train_steps_per_s']:.3g} dispatches/s, so "
                   f"the input is {record['input_over_step']:.3g}× "
                   + ("ahead" if ahead else "BEHIND (input-bound)"))
    print(f"input: {record['input_batches_per_s']:.3g} dispatches/s of "
          f"{config.train.steps_per_dispatch}×{config.train.batch_size} examples{verdict}")


if __name__ == "__main__":
    app.run(main)
