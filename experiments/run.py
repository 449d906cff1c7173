"""Entry point: ``python -m experiments.run --config=experiments/cifar10.py --workdir=DIR``.

Flags:
  --config                 a config file, optionally with variants:
                           ``experiments/cifar10.py:tiny``; override any field with
                           ``--config.train.batch_size=128`` (the config is locked: unknown
                           fields are errors).
  --workdir                checkpoints, TensorBoard events, samples, the resolved config.
  --mode                   train | eval | sample.
  --coordinator_address,
  --num_processes,
  --process_id             join a multi-process job explicitly. Without them the job is joined
                           automatically on TPU pods, SLURM and other clusters that
                           ``jax.distributed.initialize()`` detects, or when
                           JAX_COORDINATOR_ADDRESS is set; otherwise it runs as one process.
  --cpu_collectives        CPU cross-process collectives (``gloo``) for multi-process CPU runs.
  --debug                  show the traceback of a configuration or data error, and the
                           libraries' own tracebacks (asyncio, TensorStore) on failures.

Before anything is compiled or written, :func:`nfdm_jax.train.validation.validate_run`
checks every field, the workdir, the datasets and (on resume) the stored ``config.json``.
A bad input ends the run with one line ``error: ...`` on stderr naming the field or file,
exit status 1 (2 for unparsable flags), and an untouched workdir. Only training writes
``config.json``, once its checkpoint (if any) has been restored.

SIGTERM exits with status 0 at any moment: the handler below is installed before the
heavy imports; the training loop replaces it while it runs (save, then stop) and puts it
back after its teardown.
"""
from __future__ import annotations

import signal
import sys
from typing import Callable, Optional, Sequence


def exit_on_sigterm(status: int) -> Callable[[int, object], None]:
    """A SIGTERM handler ending the process with ``status``: outside the training loop
    nothing is unsaved (checkpoints and ``config.json`` are written atomically)."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(status)
    return handler


signal.signal(signal.SIGTERM, exit_on_sigterm(0))

import json  # noqa: E402
import logging as std_logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402

# XLA's C++ log shows, on a healthy CPU run, only an ERROR-level "Very slow compile?" banner
# after 2 minutes of compiling; the loop says "compiling … (≈ N s)" instead. Errors reach
# Python as exceptions. TF_CPP_MIN_LOG_LEVEL=0 brings the C++ log back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nfdm_jax.data import DatasetNotFoundError  # noqa: E402
from nfdm_jax.train import CheckpointError, loop, runtime, validation  # noqa: E402
from nfdm_jax.train.workdir_lock import WorkdirBusy  # noqa: E402

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
USER_ERRORS = (ValueError, DatasetNotFoundError, CheckpointError, FloatingPointError, OSError,
               WorkdirBusy)


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
    """The ``--config`` value; a missing file, a bad override or a value of the wrong type
    (``--config.model.data_std=abc``) is a one-line error (exit 2)."""
    try:
        config = _CONFIG.value
        config.keys()  # config_flags defers file errors to the first use.
        validation.check_types(config)
        return config
    except Exception as e:
        if _DEBUG.value:
            raise
        print(one_line(e), file=sys.stderr, flush=True)
        sys.exit(2)


def flag_error(e: Exception, argv: list[str]) -> str:
    """The one line for a flag absl or ml_collections could not parse."""
    if isinstance(e, (AttributeError, KeyError)):  # a locked config's unknown field
        # The message arrives escaped (a KeyError's repr inside another message).
        text = str(e.args[0] if e.args else e)
        key = (re.findall(r"\w+", text) or [""])[0]
        given = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a]
        guess = re.search(r"Did you mean\W+(\w+)", text)
        hint = f"; did you mean {guess.group(1)}?" if guess else ""
        return (f"error: unknown config field {given[0] if given else key}{hint} (the config "
                f"is locked: check the spelling against experiments/common.py)")
    text = str(e)
    if "Traceback (most recent call last)" in text:  # config_flags embeds the config's error
        flag = text[:text.index("Traceback")].rstrip(": \n")
        text = f"{flag}: {text.strip().splitlines()[-1].strip()}"
    return f"{one_line(Exception(text))} (see --helpfull)"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with errors (a misspelt override key, a bad value, a stray
    argument) on one line, exit status 2."""
    try:
        rest = flags.FLAGS(argv)
    except Exception as e:
        if "--debug" in argv:
            raise
        print(flag_error(e, argv), file=sys.stderr, flush=True)
        sys.exit(2)
    if len(rest) > 1:
        print(f"error: unexpected argument(s) {rest[1:]}: every setting is a flag "
              f"(--config.a.b=value; see --helpfull)", file=sys.stderr, flush=True)
        sys.exit(2)
    return rest


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


def _quiet_unraisable(unraisable: "sys.UnraisableHookArgs") -> None:
    """Drops "Exception ignored in ..." reports (asyncio's "Event loop is closed" from
    Orbax's abandoned coroutines, TensorStore futures) after a failed save or a rejected
    checkpoint: the failure itself is reported once, as one line."""


def main(argv: list[str]) -> None:
    logging.get_absl_handler().addFilter(_quiet_orbax)
    logging.get_absl_handler().addFilter(runtime.quiet_backend_probe)
    if not _DEBUG.value:
        sys.unraisablehook = _quiet_unraisable
        std_logging.getLogger("asyncio").disabled = True
    config, workdir = load_config(), _WORKDIR.value
    runtime.enable_compilation_cache()  # reruns and resumes skip recompiling
    init_distributed()
    logging.info("process %d/%d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    status = execute(config, workdir, _MODE.value, debug=_DEBUG.value)
    # The work is done: ignore a late SIGTERM. Python's finalization resets a Python handler
    # to the default (death by the signal, status 143) but leaves SIG_IGN in place.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(status)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
