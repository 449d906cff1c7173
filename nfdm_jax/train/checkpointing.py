"""Orbax checkpoints of the train state, the data-iterator state and the config, verified.

Checkpoints live in ``workdir/checkpoints/<step>/`` (plain step numbers) with four items:
``state`` (the :class:`TrainState`, sharded arrays), ``data`` (the iterator's state, an
opaque JSON-serialisable tree), ``config`` (the record of the config fields that define
what is trained, for resumes to compare against) and ``fingerprint`` (checksums of the
other three, :mod:`nfdm_jax.train.fingerprint`). Saves are asynchronous and atomic (Orbax
writes to a temporary folder and renames it when complete); restores place every array
directly onto the current mesh's shardings, so a run may resume on a different number of
devices.

Integrity, in four rules:

* **Nothing non-finite is saved.** :meth:`Checkpointer.save` checks every floating leaf
  of the state on device before writing and raises ``FloatingPointError`` instead.
* **Nothing unverified is trusted.** :meth:`Checkpointer.restore` recomputes the
  fingerprint of the restored items and compares it with the one saved.
* **Nothing is deleted by recovery.** The training run (``read_only=False``, the workdir's
  one writer) walks back from the newest step; a checkpoint that cannot be read or does
  not verify, or a step path that is not a folder, is moved to
  ``workdir/checkpoints_rejected/`` (one log line says which step and why) and the next
  older one is tried. A checkpoint written by a *different config* (other tree or shapes)
  is not corrupt: that stops the run with :class:`CheckpointError` and moves nothing.
* **Readers change nothing.** ``read_only=True`` (``--mode=eval`` / ``sample``) never
  moves, deletes or writes under ``checkpoints/``. It restores from a private hard-linked
  copy of the step folder, so that the training run's retention may delete the step
  meanwhile; a step that vanishes or changes while it is copied is not judged, the
  listing is read again. A reader skips (and leaves in place) a checkpoint that does not
  verify.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from nfdm_jax.train import fingerprint, private_copy

REJECTED_DIR = "checkpoints_rejected"
# A reader re-lists at most this often when steps vanish under it (retention of a running
# training deletes a step each save when max_to_keep=1).
READ_ATTEMPTS = 20
# check(step, data_state, config record or None) may raise CorruptCheckpoint (the checkpoint
# is bad) or CheckpointError (it belongs to another config).
Check = Callable[[int, Any, Any], None]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be restored into the current config (or none verifies)."""


class CorruptCheckpoint(Exception):
    """A checkpoint is unreadable or its contents do not match its fingerprint."""


# ------------------------------------------------------------------------------ manager

class Checkpointer:
    """Keeps the last ``max_to_keep`` checkpoints in ``workdir/checkpoints``.

    Args:
      workdir: the experiment's working directory.
      max_to_keep: checkpoints kept (older ones are deleted); at least 1.
      async_save: return from :meth:`save` while writing in the background.
      read_only: a reader (eval, sample): never saves, deletes or moves a checkpoint.
    """

    def __init__(self, workdir: str, max_to_keep: int, async_save: bool = True,
                 read_only: bool = False):
        if not isinstance(max_to_keep, int) or max_to_keep < 1:
            # Orbax treats 0 as "keep none" and deletes every checkpoint, old runs' included.
            raise ValueError(f"config.train.max_to_keep={max_to_keep!r} must be an integer >= 1")
        self.workdir = os.path.abspath(workdir) if "://" not in workdir else workdir
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.read_only = read_only
        if jax.process_count() > 1 and not read_only:  # (every process may race to create it)
            epath.Path(self.directory).mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep, read_only=read_only,
            create=jax.process_count() == 1 and not read_only,
            enable_async_checkpointing=async_save, multiprocessing_options=_barriers())
        # Handlers named up front, so that item metadata can be read before restoring.
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    "data": ocp.JsonCheckpointHandler(),
                    "config": ocp.JsonCheckpointHandler(),
                    "fingerprint": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=handlers)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: Any, record: Any) -> None:
        """Starts saving (async unless configured otherwise); a no-op if ``step`` exists.

        ``record``: the JSON config record this state was trained with. Raises
        ``FloatingPointError`` (and writes nothing) if any floating leaf of ``state`` is NaN
        or infinite, naming the newest checkpoint already saved.
        """
        if self.read_only:
            raise RuntimeError("a read-only Checkpointer never saves")
        if step in self.manager.all_steps():
            return
        # The checksums are ~one program per leaf: dispatched while the steps that produce
        # ``state`` are still queued, they could take every device slot those need
        # (ops.MAX_IN_FLIGHT); a save syncs with the host anyway.
        jax.block_until_ready(state)
        finite, prints = fingerprint.make(state, data_state, record)
        if not finite:
            self.wait()
            raise FloatingPointError(
                f"non-finite training state at step {step}; not saved. Last good checkpoint: "
                f"{self.latest_step() or 'none'} in {self.directory} (lower config.optim.lr or "
                f"config.optim.clip_norm)")
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(record), fingerprint=ocp.args.JsonSave(prints)),
            force=True)

    def restore(self, step: int, target: Any) -> tuple[Any, Any, Any]:
        """Restores and verifies ``step`` onto the shapes, dtypes and shardings of ``target``:
        ``(state, data_state, config record)`` (the record is ``None`` in checkpoints
        written before configs were recorded).

        ``target`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings (e.g. from
        ``jax.eval_shape`` plus the current mesh's shardings).

        Raises:
          CheckpointError: the checkpoint holds a different tree or shapes (another config).
          CorruptCheckpoint: it cannot be read, or its items do not match the saved
            fingerprint, or it holds non-finite values.
        """
        path = os.path.join(self.directory, str(step))
        items = self._check_structure(step, target, path)
        args = {"state": ocp.args.StandardRestore(target), "data": ocp.args.JsonRestore(),
                "fingerprint": ocp.args.JsonRestore()}
        if "config" in items:
            args["config"] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        except ValueError as e:
            if "tree structures do not match" in str(e):  # e.g. another optimizer's state
                raise _different_config(path, _first_line(e)) from e
            raise CorruptCheckpoint(f"unreadable (ValueError: {_first_line(e)})") from e
        except Exception as e:  # Orbax/TensorStore raise many types for unreadable files.
            raise CorruptCheckpoint(f"unreadable ({type(e).__name__}: {_first_line(e)})") from e
        record = restored.get("config") if "config" in items else None
        try:
            fingerprint.verify(restored.state, restored.data, record, restored.fingerprint)
        except fingerprint.Mismatch as e:
            raise CorruptCheckpoint(str(e)) from e
        return restored.state, restored.data, record

    def restore_latest(self, target: Any, check: Optional[Check] = None
                       ) -> Optional[tuple[int, Any, Any]]:
        """The newest checkpoint that verifies: ``(step, state, data_state)``; ``None`` if
        there is no checkpoint at all.

        ``check(step, data_state, record)`` may reject a restored checkpoint too (see
        :data:`Check`). The training run moves each newer corrupt checkpoint aside to
        ``workdir/checkpoints_rejected/`` with a one-line warning; a reader skips it and
        leaves it in place. Raises :class:`CheckpointError` if checkpoints existed but
        none verifies.
        """
        if self.read_only:
            return self._read_latest(target, check)
        self._move_aside_non_folders()
        rejected = []
        for step in reversed(self.all_steps()):
            reason, found = _attempt(lambda: self._restore_checked(self, step, target, check))
            reason = _agree(reason)
            if reason is None:
                return (step, *found)
            moved = self._move_aside(step)
            logging.warning("checkpoint step %d skipped: %s; moved to %s", step, reason, moved)
            rejected.append(step)
        if rejected:
            raise CheckpointError(
                f"no checkpoint in {self.directory} verifies (steps {rejected} moved to "
                f"{os.path.join(self.workdir, REJECTED_DIR)}); rerun to start from step 0")
        return None

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    @staticmethod
    def _restore_checked(source: "Checkpointer", step: int, target: Any,
                         check: Optional[Check]) -> tuple[Any, Any]:
        state, data, record = source.restore(step, target)
        if check is not None:
            check(step, data, record)
        return state, data

    def _read_latest(self, target: Any, check: Optional[Check]
                     ) -> Optional[tuple[int, Any, Any]]:
        """A reader's :meth:`restore_latest`: newest first, from private copies; a step that
        vanishes meanwhile (the training run's retention) sends it back to the listing."""
        skipped: set[int] = set()
        for _ in range(READ_ATTEMPTS):
            steps = [s for s in self._listed() if s not in skipped]
            if not steps:
                break
            step = _from_process0(steps[-1])
            try:
                reason, found = _attempt(lambda: self._read_copy(step, target, check))
            except private_copy.Vanished:
                reason, found = "vanished", None
            reason = _agree(reason)
            if reason is None:
                return (step, *found)
            if reason == "vanished" or step not in self._listed():
                logging.info("checkpoint step %d was deleted while read (the training run's "
                             "retention); reading the newest one again", step)
                continue
            logging.warning("checkpoint step %d skipped: %s (left in place: only a training "
                            "run moves checkpoints aside)", step, reason)
            skipped.add(step)
        if skipped or self._listed():
            raise CheckpointError(
                f"no checkpoint in {self.directory} could be read (skipped: "
                f"{sorted(skipped) or 'none'}; the rest changed while read); rerun")
        return None

    def _read_copy(self, step: int, target: Any, check: Optional[Check]) -> tuple[Any, Any]:
        """Restores ``step`` from a hard-linked private copy (remote storage: in place)."""
        if "://" in self.workdir:
            return self._restore_checked(self, step, target, check)
        with private_copy.linked(self.directory, step, self.workdir) as root:
            copy = Checkpointer(root, 1, async_save=False, read_only=True)
            try:
                return self._restore_checked(copy, step, target, check)
            except CheckpointError as e:  # name the real folder, not the private copy
                raise CheckpointError(str(e).replace(copy.directory, self.directory)) from e
            finally:
                copy.close()

    def _listed(self) -> list[int]:
        """Finalised step folders now on disk (read afresh, not from the manager's cache;
        a step path that is a plain file is the training run's to move aside)."""
        try:
            steps = ocp.path.step.checkpoint_steps(self.directory)
        except FileNotFoundError:  # a step deleted while listed: list again
            steps = ocp.path.step.checkpoint_steps(self.directory)
        local = "://" not in self.directory
        return sorted(s for s in steps
                      if not local or os.path.isdir(os.path.join(self.directory, str(s))))

    def _check_structure(self, step: int, target: Any, path: str) -> set[str]:
        """A different tree or shapes means another config (stop), not corruption.
        Returns the names of the checkpoint's items."""
        try:
            items = self.manager.item_metadata(step)
            if "fingerprint" not in items.keys():  # (JSON items' metadata is None: test keys)
                raise FileNotFoundError("no fingerprint (written before checkpoints were "
                                        "verified, or deleted)")
            if items["state"] is None:
                raise FileNotFoundError("no state metadata")
            saved = _shapes(items["state"])
        except Exception as e:
            raise CorruptCheckpoint(f"metadata unreadable ({type(e).__name__}: "
                                    f"{_first_line(e)})") from e
        wanted = _shapes(target)
        if saved != wanted:
            diff = sorted(set(saved.items()) ^ set(wanted.items()))
            detail = "; ".join(f"{k}: saved {saved.get(k, 'absent')}, expected "
                               f"{wanted.get(k, 'absent')}" for k, _ in diff[:4])
            raise _different_config(path, detail)
        return set(items.keys())

    def _move_aside_non_folders(self) -> None:
        """A step path that is a plain file is never a checkpoint; Orbax would skip it
        silently and later write over it. Moved aside like any bad checkpoint."""
        if "://" in self.workdir or not os.path.isdir(self.directory):
            return
        for name in sorted(os.listdir(self.directory)):
            if name.isdigit() and not os.path.isdir(os.path.join(self.directory, name)):
                moved = self._move_aside(int(name))
                logging.warning("checkpoint step %s skipped: not a folder; moved to %s",
                                name, moved)

    def _move_aside(self, step: int) -> str:
        """Moves ``checkpoints/<step>`` to ``checkpoints_rejected/<step>[.n]`` (process 0)."""
        source = epath.Path(self.directory) / str(step)
        rejected = epath.Path(self.workdir) / REJECTED_DIR
        dest = rejected / str(step)
        n = 1
        while dest.exists():
            dest, n = rejected / f"{step}.{n}", n + 1
        if jax.process_index() == 0:
            rejected.mkdir(parents=True, exist_ok=True)
            source.rename(dest)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"nfdm_reject_{step}")
        self.manager.reload()
        return str(dest)


def _attempt(restore: Callable[[], tuple[Any, Any]]) -> tuple[Optional[str], Any]:
    """``(None, result)`` or ``(why the checkpoint is corrupt, None)``."""
    try:
        return None, restore()
    except CorruptCheckpoint as e:
        return str(e), None


def _from_process0(value: int) -> int:
    """Several processes: process 0's ``value`` on all (they must read the same step)."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _barriers() -> ocp.options.MultiprocessingOptions:
    """Several processes: Orbax synchronises through the coordination service, not devices.

    Orbax's default barrier is a device collective (``sync_global_devices``). Issued from
    its background threads (async saves, directory creation), it can reach the devices
    in a different order, relative to the train step's collectives, on each host, and
    both hosts wait forever: seen about once in 25 runs of the two-process SIGTERM test
    on CPU. Naming every process as active selects the coordination service's barriers,
    which are safe from any thread; Orbax then leaves creating the folder to us.
    """
    if jax.process_count() == 1:
        return ocp.options.MultiprocessingOptions()
    return ocp.options.MultiprocessingOptions(active_processes=set(range(jax.process_count())))


def _different_config(path: str, detail: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} was written by a different config (model, network or optimizer): "
        f"{detail}. Use the config it was trained with, or a fresh --workdir.")


def _agree(reason: Optional[str]) -> Optional[str]:
    """Several processes: a checkpoint one of them cannot verify is rejected by all."""
    if jax.process_count() == 1:
        return reason
    failed = multihost_utils.process_allgather(np.int32(reason is not None))
    if reason is None and np.max(failed):
        return "unreadable or not matching on another process"
    return reason


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{"a/b/0": shape}``: paths spelt the same for a TrainState and Orbax's metadata tree."""
    def name(k: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    return {"/".join(map(name, p)): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""
