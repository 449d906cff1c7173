"""Entry point: ``python -m experiments.run --config=experiments/cifar10.py --workdir=DIR``.

Flags:
  --config                 a config file, optionally with a variant: ``experiments/cifar10.py:tiny``;
                           override any field with ``--config.train.batch_size=128`` (the
                           config is locked: unknown fields are errors).
  --workdir                checkpoints, TensorBoard events, samples, the resolved config.
  --mode                   train | eval | sample.
  --coordinator_address,
  --num_processes,
  --process_id             join a multi-process job explicitly. Without them the job is joined
                           automatically on TPU pods, SLURM and other clusters that
                           ``jax.distributed.initialize()`` detects, or when
                           JAX_COORDINATOR_ADDRESS is set; otherwise it runs as one process.
  --cpu_collectives        CPU cross-process collectives (``gloo``) for multi-process CPU runs.
"""
from __future__ import annotations

import json
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from nfdm_jax.data import DatasetNotFoundError
from nfdm_jax.train import CheckpointError, loop, runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.", required=True)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to run.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_COLLECTIVES = flags.DEFINE_string("cpu_collectives", None, "e.g. 'gloo'.")
flags.mark_flag_as_required("config")

# Environments in which jax.distributed.initialize() finds its peers by itself.
_AUTO_DETECTED = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE")


def init_distributed() -> None:
    """Joins the multi-process job this process belongs to, if any."""
    if _CPU_COLLECTIVES.value:
        jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
    if _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif (any(v in os.environ for v in _AUTO_DETECTED)
          or int(os.environ.get("SLURM_NTASKS", "1")) > 1):
        jax.distributed.initialize()


def write_config(config, workdir: str) -> None:
    """The resolved config as JSON in the workdir (process 0), for the record."""
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def _quiet_orbax(record) -> bool:
    # Orbax logs several INFO lines per checkpoint; keep its warnings and errors only.
    return record.levelno > 20 or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_quiet_orbax)
    runtime.enable_compilation_cache()  # reruns and resumes skip recompiling
    init_distributed()
    config, workdir = _CONFIG.value, _WORKDIR.value
    logging.info("process %d/%d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    try:
        write_config(config, workdir)
        if _MODE.value == "train":
            loop.train(config, workdir)
        elif _MODE.value == "eval":
            print(json.dumps(loop.run_eval(config, workdir), sort_keys=True))
        else:
            print(loop.run_sample(config, workdir))
    except (ValueError, DatasetNotFoundError, CheckpointError, FloatingPointError,
            FileNotFoundError) as e:
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(f"error: {type(e).__name__}: {e}")


if __name__ == "__main__":
    app.run(main)
