"""Training, evaluation and sampling driven by a config: the outer loops around the steps.

:func:`setup` does everything that can fail on a bad config or missing data (opening
datasets, building the mesh and model, checking divisibility) before anything is
compiled. :func:`train` then resumes from the latest checkpoint in the workdir, runs
jitted steps without host synchronisation except every ``log_every`` steps (and at
checkpoints), and stops cleanly on SIGTERM.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from nfdm_jax import evaluation, plotting
from nfdm_jax.data import BatchIterator, DatasetSpec, eval_batches, make_datasets
from nfdm_jax.models import Model
from nfdm_jax.train import generate, sharding, step as steps
from nfdm_jax.train import validation
from nfdm_jax.train.checkpointing import CheckpointError, Checkpointer, CorruptCheckpoint
from nfdm_jax.train.optimizer import learning_rate, make_optimizer
from nfdm_jax.train.preemption import Preemption
from nfdm_jax.train.state import TrainState
from nfdm_jax.train.summaries import MetricWriter

# Independent streams derived from config.seed.
_INIT, _TRAIN, _EVAL, _SAMPLE = range(4)


@dataclasses.dataclass
class Experiment:
    """Everything built from a config before compiling."""

    config: ml_collections.ConfigDict
    data: DatasetSpec
    mesh: jax.sharding.Mesh
    model: Model
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    abstract_state: Any          # TrainState of ShapeDtypeStructs
    state_shardings: Any         # TrainState of NamedShardings
    example: dict[str, np.ndarray]

    def key(self, stream: int) -> jax.Array:
        return jax.random.fold_in(jax.random.PRNGKey(self.config.seed), stream)

    @property
    def eval_batch_size(self) -> int:
        return self.config.train.eval_batch_size or self.config.train.batch_size

    @functools.cached_property
    def batch_nats(self) -> Callable:
        """Per-example objective in nats, ``(params, x, key) -> [B]`` (one object, so
        :func:`nfdm_jax.evaluation.evaluate_bpd` compiles once)."""
        return lambda params, x, key: self.model.per_example(params, {"x": x}, key)["total"]

    @functools.cached_property
    def eval_step(self) -> Callable:
        """The jitted :func:`steps.make_eval_step`, compiled once per experiment."""
        return jax.jit(steps.make_eval_step(self.model, self.config.train.eval_t_samples),
                       in_shardings=(self.state_shardings.params,
                                     sharding.batch_sharding(self.mesh, False),
                                     sharding.replicated(self.mesh)))


def setup(config: ml_collections.ConfigDict,
          devices: Optional[Sequence[jax.Device]] = None,
          data: Optional[DatasetSpec] = None) -> Experiment:
    """Checks ``config`` (:func:`validation.check_config`) and builds the experiment, before
    any compilation; raises ``ValueError`` / ``DatasetNotFoundError`` naming the problem.

    ``data``: the datasets if already opened (by :func:`validation.validate_run`).
    """
    t = config.train
    validation.check_config(config, devices)
    mesh = sharding.make_mesh(config, devices)
    data = data if data is not None else make_datasets(config.data, config.seed)
    model = Model(config, data.shape)
    schedule = learning_rate(config.optim, t.num_steps)
    optimizer = make_optimizer(config.optim, t.num_steps)
    example = {f: np.stack([s[0]["x"]]) for f, s in data.train.items()}
    init = lambda key: steps.init_state(model, optimizer, key, example)  # noqa: E731
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = sharding.tree_shardings(mesh, abstract, config.mesh.shard_min_size)
    return Experiment(config, data, mesh, model, optimizer, schedule, abstract, shardings, example)


def create_state(exp: Experiment) -> TrainState:
    """A fresh state, created directly in its sharded layout."""
    init = lambda key: steps.init_state(exp.model, exp.optimizer, key, exp.example)  # noqa: E731
    return jax.jit(init, out_shardings=exp.state_shardings)(exp.key(_INIT))


def restore_or_create(exp: Experiment, ckpt: Checkpointer) -> tuple[TrainState, int]:
    """The newest checkpoint that verifies (onto the current mesh) or a fresh state, and
    its step. Corrupt newer checkpoints are moved aside (:meth:`Checkpointer.restore_latest`)."""
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          exp.abstract_state, exp.state_shardings)
    found = ckpt.restore_latest(target, functools.partial(check_data_state, exp.config))
    if found is None:
        return create_state(exp), 0
    step, state, _ = found
    logging.info("Resumed from %s/%d", ckpt.directory, step)
    return state, step


def check_data_state(config: ml_collections.ConfigDict, step: int, data_state: Any) -> None:
    """The data-iterator state saved with checkpoint ``step`` must belong to it (else the
    checkpoint is corrupt) and to ``config.seed`` (else the config is wrong). Only the
    ``step`` and ``seed`` entries, where the iterator's state has them, are looked at."""
    if not isinstance(data_state, dict):
        return
    if data_state.get("step", step) != step:
        raise CorruptCheckpoint(f"its data-iterator state {data_state} is not at step {step}")
    if data_state.get("seed", config.seed) != config.seed:
        raise CheckpointError(f"checkpoint {step} was trained with seed {data_state['seed']}, "
                              f"but config.seed={config.seed}; use the same seed")


def evaluate(exp: Experiment, params: Any) -> dict[str, float]:
    """Test-split means of every objective term (``bpd`` included): one ordered pass,
    padded and masked, ``config.train.eval_t_samples`` t-samples per example."""
    totals: dict[str, jax.Array] = {}
    for i, batch in enumerate(eval_batches(exp.data.eval, exp.eval_batch_size, exp.mesh)):
        sums = exp.eval_step(params, batch, jax.random.fold_in(exp.key(_EVAL), i))
        totals = sums if not totals else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals.pop("count"))
    return {k: float(v) / count for k, v in totals.items()}


def sample(exp: Experiment, params: Any, workdir: str, step: int) -> str:
    """Draws ``config.sample.num`` samples and writes ``workdir/samples/<step>.npz``
    (and a PNG grid for images) from process 0; returns the .npz path."""
    s = exp.config.sample
    x1 = None
    if exp.model.bridge:
        batch = next(eval_batches({"x": exp.data.eval["x1"]}, s.num, exp.mesh))
        x1 = exp.model.condition({"x1": batch["x"]})
    draw = jax.jit(lambda p, k, c: generate.generate(exp.model, p, k, s.num, s.method, s.steps, c))
    z = draw(params, exp.key(_SAMPLE), x1)
    images = len(exp.model.shape) == 3
    out = multihost_utils.process_allgather(generate.to_pixels(z) if images else z, tiled=True)
    path = os.path.join(workdir, "samples", f"{step}.npz")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(path, samples=np.asarray(out))
        if images:
            plotting.save_image_grid(np.asarray(out), path[:-4] + ".png")
        elif out.shape[-1] == 2:
            plotting.save_scatter(np.asarray(out), path[:-4] + ".png")
    return path


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The resolved config as ``workdir/config.json`` (process 0), for the record and for
    checking resumes (:func:`validation.check_stored_config`). Written to a temporary file
    and renamed, so that it is never half-written."""
    if jax.process_index() == 0:
        path = os.path.join(workdir, "config.json")
        with open(path + ".tmp", "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
        os.replace(path + ".tmp", path)


def _crossed(prev: int, now: int, every: int) -> bool:
    return every > 0 and now // every > prev // every


def train(config: ml_collections.ConfigDict, workdir: str,
          devices: Optional[Sequence[jax.Device]] = None,
          data: Optional[DatasetSpec] = None) -> TrainState:
    """Trains to ``config.train.num_steps``, resuming from ``workdir/checkpoints``.

    Returns the final state. Exits early (returning the saved state) on SIGTERM or a
    multi-host pre-emption notice. Raises ``FloatingPointError`` naming the step and last
    good checkpoint on non-finite metrics or state (nothing non-finite is ever saved).
    """
    exp = setup(config, devices, data)
    t = config.train
    ckpt = Checkpointer(workdir, t.max_to_keep, t.async_checkpointing)
    state, step = restore_or_create(exp, ckpt)
    write_config(config, workdir)  # only now: every check passed and the state restored
    batches = BatchIterator(exp.data.train, t.batch_size, exp.mesh, config.seed,
                            start_step=step, steps_per_dispatch=t.steps_per_dispatch)
    train_step = steps.jit_train_step(
        steps.make_train_step(exp.model, exp.optimizer, exp.schedule, exp.key(_TRAIN),
                              config.optim.ema_decay), exp.mesh, exp.state_shardings)
    writer = MetricWriter(workdir)
    preemption = Preemption(ckpt.manager.reached_preemption)
    dispatch = 0
    pending: list[dict[str, jax.Array]] = []
    last_time, last_step = time.perf_counter(), step
    try:
        while step < t.num_steps:
            state, metrics = train_step(state, next(batches))
            pending.append(metrics)
            prev, step = step, step + t.steps_per_dispatch
            final = step >= t.num_steps
            save = final or _crossed(prev, step, t.checkpoint_every)
            if save or _crossed(prev, step, t.log_every):
                # The only host synchronisation in the loop: fetch and check the metrics.
                fetched = jax.device_get(pending)
                pending = []
                means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
                if not all(np.isfinite(list(means.values()))):
                    ckpt.wait()
                    raise FloatingPointError(
                        f"non-finite metrics at step {step}: {means}. Last good checkpoint: "
                        f"{ckpt.latest_step() or 'none'} in {ckpt.directory}")
                now = time.perf_counter()
                means["step_time"] = (now - last_time) / (step - last_step)
                means["examples_per_sec"] = t.batch_size / means["step_time"]
                last_time, last_step = now, step
                writer.scalars(step, means, "train")
            if save:
                ckpt.save(step, state, batches.state)
            if _crossed(prev, step, t.eval_every):
                writer.scalars(step, evaluate(exp, state.ema_params), "eval")
            if _crossed(prev, step, config.sample.every):
                sample(exp, state.ema_params, workdir, step)
            if preemption.should_stop(dispatch, save or _crossed(prev, step, t.log_every)):
                logging.warning("SIGTERM: saving step %d and exiting", step)
                ckpt.save(step, state, batches.state)  # Checked for NaN like every save.
                break
            dispatch += 1
        ckpt.wait()
    finally:
        preemption.restore()
        batches.close()
        ckpt.close()
        writer.close()
    return state


def test_bpd(exp: Experiment, params: Any, workdir: str, step: int) -> dict[str, float]:
    """BPD ± standard error with :func:`nfdm_jax.evaluation.evaluate_bpd`, recorded in
    ``workdir/eval/bpd_<step>.json`` (likelihood models without a bridge source)."""
    result = evaluation.evaluate_bpd(
        exp.batch_nats, params, eval_batches(exp.data.eval, exp.eval_batch_size, exp.mesh),
        exp.key(_EVAL), convention=exp.model.convention,
        num_t_samples=exp.config.train.eval_t_samples)
    if jax.process_index() == 0:
        evaluation.write_bpd_json(os.path.join(workdir, "eval", f"bpd_{step}.json"), result,
                                  checkpoint_step=step, split="eval")
    return {"bpd": result.bpd, "bpd_stderr": result.stderr}


def _from_latest(config: ml_collections.ConfigDict, workdir: str, purpose: str,
                 fn: Callable[[Experiment, Any, int], Any],
                 data: Optional[DatasetSpec] = None) -> Any:
    """``fn(experiment, ema_params, step)`` on the newest checkpoint in ``workdir`` that
    verifies (corrupt newer ones are moved aside)."""
    exp = setup(config, data=data)
    ckpt = Checkpointer(workdir, config.train.max_to_keep)
    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory} to {purpose}")
        state, step = restore_or_create(exp, ckpt)
        return fn(exp, state.ema_params, step)
    finally:
        ckpt.close()


def run_eval(config: ml_collections.ConfigDict, workdir: str,
             data: Optional[DatasetSpec] = None) -> dict[str, float]:
    """Test-split metrics of the latest checkpoint's EMA parameters: every objective term,
    and for likelihood models the BPD with its standard error (also written as JSON)."""

    def eval_metrics(exp: Experiment, params: Any, step: int) -> dict[str, float]:
        metrics = evaluate(exp, params)
        if not exp.model.bridge and exp.model.name != "nfdm_ot":
            metrics |= test_bpd(exp, params, workdir, step)
        MetricWriter(workdir).scalars(step, metrics, "eval")
        return metrics

    return _from_latest(config, workdir, "evaluate", eval_metrics, data)


def run_sample(config: ml_collections.ConfigDict, workdir: str,
               data: Optional[DatasetSpec] = None) -> str:
    """Samples from the latest checkpoint's EMA parameters; returns the .npz path."""
    return _from_latest(config, workdir, "sample from",
                        lambda exp, params, step: sample(exp, params, workdir, step), data)
