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
  --debug                  show the traceback of a configuration or data error.

Before anything is compiled or written, :func:`nfdm_jax.train.validation.validate_run`
checks every field, the workdir, the datasets and (on resume) the stored ``config.json``.
A bad input ends the run with one line ``error: ...`` on stderr naming the field or file,
exit status 1 (2 for unparsable flags), and an untouched workdir. Only training writes
``config.json``, once its checkpoint (if any) has been restored.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

# XLA's C++ log shows, on a healthy CPU run, only an ERROR-level "Very slow compile?" banner
# after 2 minutes of compiling; the loop says "compiling … (≈ N s)" instead. Errors reach
# Python as exceptions. TF_CPP_MIN_LOG_LEVEL=0 brings the C++ log back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nfdm_jax.data import DatasetNotFoundError  # noqa: E402
from nfdm_jax.train import CheckpointError, loop, runtime, validation  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory.", required=True)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to run.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_COLLECTIVES = flags.DEFINE_string("cpu_collectives", None, "e.g. 'gloo'.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show tracebacks of configuration errors.")
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


# Errors caused by what the user passed (or by the files they point to): one line, no
# traceback. OSError covers unwritable or full disks met while running.
USER_ERRORS = (ValueError, DatasetNotFoundError, CheckpointError, FloatingPointError, OSError)


def one_line(e: BaseException) -> str:
    """``error: <message>`` on one line (multi-line messages are joined)."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return f"error: {text or type(e).__name__}"


def execute(config, workdir: str, mode: str,
            devices: Optional[Sequence[jax.Device]] = None, debug: bool = False) -> int:
    """Validates, then trains / evaluates / samples; returns the exit status.

    A user error prints one line on stderr and returns 1 (``debug``: raises instead).
    """
    try:
        data = validation.validate_run(config, workdir, mode, devices)
        if mode == "train":
            loop.train(config, workdir, devices, data)
        elif mode == "eval":
            print(json.dumps(loop.run_eval(config, workdir, data), sort_keys=True))
        else:
            print(loop.run_sample(config, workdir, data))
    except USER_ERRORS as e:
        if debug:
            raise
        print(one_line(e), file=sys.stderr, flush=True)
        return 1
    return 0


def load_config():
    """The ``--config`` value; a missing file or bad override is a one-line error (exit 2)."""
    try:
        config = _CONFIG.value
        config.keys()  # config_flags defers file errors to the first use.
        return config
    except Exception as e:
        if _DEBUG.value:
            raise
        print(one_line(e), file=sys.stderr, flush=True)
        sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with errors (a misspelt override key, a bad value) on one line."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:
        if "--debug" in argv:
            raise
        message = f"{one_line(e)} (see --helpfull)"
        if isinstance(e, (AttributeError, KeyError)):  # a locked config's unknown field
            key = str(e).strip("\"'")
            given = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a]
            message = (f"error: unknown config field {given[0] if given else key!r} (the "
                       f"config is locked: check the spelling against experiments/common.py)")
        print(message, file=sys.stderr, flush=True)
        sys.exit(2)


def _quiet_orbax(record) -> bool:
    """Log filter: Orbax's INFO lines go (several per checkpoint); its warnings and errors
    stay, without tracebacks unless --debug. A failed asynchronous save (a full disk)
    also leaves asyncio tasks whose tracebacks asyncio logs; the same error ends the run
    as one ``error:`` line."""
    if record.getMessage().startswith("Task exception was never retrieved"):
        return _DEBUG.value
    if "/orbax/" in record.pathname:
        if record.levelno <= 20:
            return False
        if not _DEBUG.value:
            record.exc_info, record.exc_text = None, None
    return True


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_quiet_orbax)
    logging.get_absl_handler().addFilter(runtime.quiet_backend_probe)
    config, workdir = load_config(), _WORKDIR.value
    runtime.enable_compilation_cache()  # reruns and resumes skip recompiling
    init_distributed()
    logging.info("process %d/%d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    sys.exit(execute(config, workdir, _MODE.value, debug=_DEBUG.value))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
