"""Training, evaluation and sampling driven by a config: the outer loops around the steps.

Each loop builds its :class:`~nfdm_jax.train.experiment.Experiment` from a config the entry
path has validated (:mod:`nfdm_jax.train.validation`). :func:`train` resumes from the latest
checkpoint in the workdir, runs jitted steps without host synchronisation except every
``log_every`` steps (and at checkpoints), and stops cleanly on SIGTERM.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from nfdm_jax import decoders, evaluation, ops, plotting
from nfdm_jax.data import BatchIterator, DatasetSpec, eval_batches
from nfdm_jax.train import generate, quality, step as steps, validation, workdir_lock
from nfdm_jax.train.experiment import SAMPLE, TRAIN, EVAL, Experiment, create_state, setup
from nfdm_jax.train.checkpointing import CheckpointError, Checkpointer, CorruptCheckpoint
from nfdm_jax.train.progress import CompileTimer, Progress, info, summary
from nfdm_jax.train.preemption import Preemption
from nfdm_jax.train.state import TrainState
from nfdm_jax.train.summaries import MetricWriter


def restore_or_create(exp: Experiment, ckpt: Checkpointer) -> tuple[TrainState, int]:
    """The newest checkpoint that verifies (onto the current mesh) or a fresh state, and
    its step. Corrupt newer checkpoints are moved aside by a training run, skipped by a
    reader (:meth:`Checkpointer.restore_latest`)."""
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          exp.abstract_state, exp.state_shardings)
    found = ckpt.restore_latest(target, functools.partial(check_restored, exp.config))
    if found is None:
        return create_state(exp), 0
    step, state, _ = found
    logging.info("Resumed from %s/%d", ckpt.directory, step)
    return state, step


def check_restored(config: ml_collections.ConfigDict, step: int, data_state: Any,
                   record: Any) -> None:
    """Checkpoint ``step`` must have been trained with ``config``'s model and data fields
    (its config ``record``, when it has one) and its data-iterator state must belong to it
    (else the checkpoint is corrupt) and to ``config.seed``. Only the ``step`` and ``seed``
    entries, where the iterator's state has them, are looked at."""
    diff = validation.stored_config_differences(config, record) if record is not None else []
    if diff:
        raise CheckpointError(f"checkpoint {step} was trained with other model/data fields: "
                              f"{'; '.join(diff)}. Use the stored values or a fresh --workdir")
    if not isinstance(data_state, dict):
        return
    if data_state.get("step", step) != step:
        raise CorruptCheckpoint(f"its data-iterator state {data_state} is not at step {step}")
    if data_state.get("seed", config.seed) != config.seed:
        raise CheckpointError(f"checkpoint {step} was trained with seed {data_state['seed']}, "
                              f"but config.seed={config.seed}; use the same seed")


def evaluate(exp: Experiment, params: Any) -> evaluation.Evaluation:
    """Every objective term on the eval split, mean ± standard error (one ordered, padded
    pass; ``config.train.eval_t_samples`` t-samples per example; names from the model)."""
    batches = eval_batches(exp.data.eval, exp.eval_batch_size, exp.mesh)
    total = math.ceil(len(next(iter(exp.data.eval.values()))) / exp.eval_batch_size)
    progress = Progress("eval", total, unit="batches")

    def dispatched(index: int) -> None:
        # The first dispatch compiled the evaluation: hosts wait for each other before the
        # first batch's collectives run (see _all_compiled).
        if index == 1:
            _all_compiled("eval")
        progress.update(index)

    return evaluation.evaluate(exp.model.per_example, params, batches, exp.key(EVAL),
                               num_t_samples=exp.config.train.eval_t_samples,
                               progress=dispatched)


def eval_metrics(exp: Experiment, params: Any) -> dict[str, float]:
    """:func:`evaluate` as ``{term: mean, term_stderr: se}``."""
    return evaluate(exp, params).means()


def sample(exp: Experiment, params: Any, workdir: str, step: int) -> str:
    """Draws ``config.sample.num`` samples and writes ``workdir/samples/<step>.npz``
    (and a PNG grid for images) from process 0; returns the .npz path."""
    s = exp.config.sample
    x1 = None
    if exp.model.bridge:
        batch = next(eval_batches({"x": exp.data.eval["x1"]}, s.num, exp.mesh))
        x1 = exp.model.condition({"x1": batch["x"]})
    draw = jax.jit(lambda p, k, c: generate.generate(exp.model, p, k, s.num, s.method, s.steps, c,
                                                     s.rho))
    info("sampling %d with %s, %d steps…", s.num, s.method, s.steps)
    key = exp.key(SAMPLE)
    draw = draw.lower(params, key, x1).compile()
    _all_compiled("sample")
    z = draw(params, key, x1)
    images = len(exp.model.shape) == 3
    out = multihost_utils.process_allgather(decoders.to_pixels(z) if images else z, tiled=True)
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
    checking resumes (:func:`nfdm_jax.train.validation.check_stored_config`). Written to a
    temporary file and renamed, so that it is never half-written."""
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
    """Trains to ``config.train.num_steps``, resuming from ``workdir/checkpoints``, holding
    the workdir's lock (:class:`~nfdm_jax.train.workdir_lock.WorkdirBusy` if another
    training run holds it).

    Returns the final state. Exits early (returning the saved state) on SIGTERM or a
    multi-host pre-emption notice. Raises ``FloatingPointError`` naming the step and last
    good checkpoint on non-finite metrics or state (nothing non-finite is ever saved).
    Logs a progress line (steps/s, ETA) with the metrics and ends with a summary line.
    """
    with workdir_lock.hold(workdir):
        return _train(config, workdir, devices, data)


def _train(config: ml_collections.ConfigDict, workdir: str,
           devices: Optional[Sequence[jax.Device]], data: Optional[DatasetSpec]) -> TrainState:
    t0 = time.perf_counter()
    exp = setup(config, devices, data)
    t = config.train
    ckpt = Checkpointer(workdir, t.max_to_keep)
    state, step = restore_or_create(exp, ckpt)
    write_config(config, workdir)  # only now: every check passed and the state restored
    if step >= t.num_steps:
        info("[done] %s is already complete: checkpoint %d of config.train.num_steps=%d in %s "
             "(raise --config.train.num_steps to train further, or use --mode=eval / sample)",
             workdir, step, t.num_steps, ckpt.directory)
        ckpt.close()
        return state
    record = validation.provenance(config)
    batches = BatchIterator(exp.data.train, t.batch_size, exp.mesh, config.seed,
                            start_step=step, steps_per_dispatch=t.steps_per_dispatch)
    train_step = steps.jit_train_step(exp.training.step(exp.key(TRAIN)), exp.mesh,
                                      exp.state_shardings)
    writer = MetricWriter(workdir)
    preemption = Preemption(ckpt.manager.reached_preemption)
    dispatch = 0
    pending: list[dict[str, jax.Array]] = []
    final_metrics: dict[str, float] = {}
    try:
        first = next(batches)
        with CompileTimer(workdir, "the train step"):
            train_step = train_step.lower(state, first).compile()
        _all_compiled("train_step")
        progress = Progress("train", t.num_steps, start=step)
        last_time, last_step = time.perf_counter(), step
        while step < t.num_steps:
            batch, first = (first, None) if first is not None else (next(batches), None)
            state, metrics = train_step(state, batch)
            pending.append(metrics)
            ops.bound_in_flight(pending)
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
                means["steps_per_sec"] = 1.0 / means["step_time"]
                means["examples_per_sec"] = t.batch_size / means["step_time"]
                last_time, last_step = now, step
                final_metrics = means
                writer.scalars(step, final_metrics, "train")
                progress.update(step)
            if save:
                ckpt.save(step, state, batches.state, record)
            if _crossed(prev, step, t.eval_every) or _crossed(prev, step, config.sample.every):
                # Their programs must not queue ahead of the steps' launches (ops.MAX_IN_FLIGHT).
                jax.block_until_ready(state)
            if _crossed(prev, step, t.eval_every):
                evaluated = eval_metrics(exp, state.ema_params)
                writer.scalars(step, evaluated, "eval")
                final_metrics |= {f"eval_{k}": v for k, v in evaluated.items()}
            if _crossed(prev, step, config.sample.every):
                sample(exp, state.ema_params, workdir, step)
            if preemption.should_stop(dispatch, save or _crossed(prev, step, t.log_every)):
                logging.warning("SIGTERM: saving step %d and exiting", step)
                ckpt.save(step, state, batches.state, record)  # Checked for NaN like every save.
                break
            dispatch += 1
        ckpt.wait()
    finally:
        batches.close()
        ckpt.close()
        writer.close()
        preemption.restore()  # last: a SIGTERM during the teardown only sets its flag
    info("%s", summary("train", step, time.perf_counter() - t0, final_metrics,
                       _outputs(workdir, ckpt.directory, step, config.sample.every > 0),
                       rate=progress.rate()))
    return state


def _outputs(workdir: str, checkpoints: str, step: int, samples: bool) -> dict[str, str]:
    """Where a run's outputs are, for the summary line."""
    out = {"checkpoint": os.path.join(checkpoints, str(step)),
           "metrics": os.path.join(os.path.abspath(workdir), "tensorboard")}
    if samples:
        out["samples"] = os.path.join(os.path.abspath(workdir), "samples")
    return out


_BARRIERS = itertools.count()


def _all_compiled(name: str, timeout_s: int = 3600) -> None:
    """Several processes: wait, through the coordination service, until every process has
    compiled ``name``. Compile times differ between hosts (one finds the persistent cache,
    another does not), and the first step's collectives would otherwise wait on a slow peer:
    gloo, JAX's CPU collectives, gives up after 30 s (4 processes on 2 loaded cores)."""
    if jax.process_count() > 1:
        sync = ocp.multihost.get_barrier_sync_fn()
        # A barrier's key may be used once: count the calls (the same on every process).
        sync(key=f"nfdm_compiled_{name}_{next(_BARRIERS)}", timeout_ms=timeout_s * 1000)


def from_latest(config: ml_collections.ConfigDict, workdir: str, purpose: str,
                fn: Callable[[Experiment, Any, int], Any],
                data: Optional[DatasetSpec] = None) -> Any:
    """``fn(experiment, ema_params, step)`` on the newest checkpoint in ``workdir`` that
    verifies, read without changing anything under ``checkpoints/`` (a training run may be
    writing it: :class:`Checkpointer` with ``read_only``)."""
    exp = setup(config, data=data)
    ckpt = Checkpointer(workdir, config.train.max_to_keep, read_only=True)
    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory} to {purpose}")
        state, step = restore_or_create(exp, ckpt)
        return fn(exp, state.ema_params, step)
    finally:
        ckpt.close()


def run_eval(config: ml_collections.ConfigDict, workdir: str,
             data: Optional[DatasetSpec] = None) -> dict[str, float]:
    """Eval-split metrics of the latest checkpoint's EMA parameters: every objective term
    with its standard error (``bpd`` for likelihood models) and, for images, the Fréchet
    distances of :mod:`nfdm_jax.train.quality`; written to ``workdir/eval/<step>.json``."""
    t0 = time.perf_counter()

    def run(exp: Experiment, params: Any, step: int) -> dict[str, float]:
        result = evaluate(exp, params)
        sample_quality = quality.sample_quality(exp, params, workdir, exp.key(SAMPLE))
        metrics = result.means() | sample_quality
        MetricWriter(workdir).scalars(step, metrics, "eval")
        path = os.path.join(os.path.abspath(workdir), "eval", f"{step}.json")
        if jax.process_index() == 0:
            evaluation.write_json(path, result, checkpoint_step=step, split="eval",
                                  sample_quality=sample_quality)
        info("%s", summary(f"eval of checkpoint {step}", None, time.perf_counter() - t0,
                           metrics, {"metrics": path}))
        return metrics

    return from_latest(config, workdir, "evaluate", run, data)


def run_sample(config: ml_collections.ConfigDict, workdir: str,
               data: Optional[DatasetSpec] = None) -> str:
    """Samples from the latest checkpoint's EMA parameters; returns the .npz path."""
    return from_latest(config, workdir, "sample from",
                       lambda exp, params, step: sample(exp, params, workdir, step), data)
