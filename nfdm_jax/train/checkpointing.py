"""Orbax checkpoints of the train state and the data-iterator state, verified on restore.

Checkpoints live in ``workdir/checkpoints/<step>/`` (plain step numbers) with three items:
``state`` (the :class:`TrainState`, sharded arrays), ``data`` (the iterator's state, an
opaque JSON-serialisable tree) and ``fingerprint`` (a checksum of every state leaf and of
the data state). Saves are asynchronous and atomic (Orbax writes to a temporary folder and
renames it when complete); restores place every array directly onto the current mesh's
shardings, so a run may resume on a different number of devices.

Integrity, in three rules:

* **Nothing non-finite is saved.** :meth:`Checkpointer.save` checks every floating leaf
  of the state on device before writing and raises ``FloatingPointError`` instead.
* **Nothing unverified is trusted.** :meth:`Checkpointer.restore` recomputes the
  fingerprint of the restored arrays and compares it with the one saved.
* **Nothing is deleted by recovery.** :meth:`Checkpointer.restore_latest` walks back from
  the newest step; a checkpoint that cannot be read or does not verify is moved to
  ``workdir/checkpoints_rejected/`` (one log line says which step and why) and the next
  older one is tried. A checkpoint written by a *different config* (other tree or shapes)
  is not corrupt: that stops the run with :class:`CheckpointError` and moves nothing.

The fingerprint of a leaf is two 32-bit sums over its elements' bit patterns (one with
odd weights per flat index, one of a mixing hash of bits and index) and its size. Orbax
itself checksums only the index of zarr3 shards, not the data. Integer sums wrap exactly
and in any order, so the fingerprint is the same however the array is sharded, on any
number of devices and hosts.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

FINGERPRINT_VERSION = 1
REJECTED_DIR = "checkpoints_rejected"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be restored into the current config (or none verifies)."""


class CorruptCheckpoint(Exception):
    """A checkpoint is unreadable or its contents do not match its fingerprint."""


# ----------------------------------------------------------------------------- fingerprints

def _mix(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: every input bit affects every output bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _as_uint32(x: jax.Array) -> jax.Array:
    """The bit pattern of every element as uint32, flattened: ``[N]`` (64-bit: ``[2N]``)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32).reshape(-1)


@jax.jit
def _leaf_summary(x: jax.Array) -> jax.Array:
    """``uint32[4]``: two order-independent hash sums over (bits, index) of all elements,
    the element count, and 1 if no element is NaN or infinite."""
    bits = _as_uint32(x)
    index = jnp.arange(bits.shape[0], dtype=jnp.uint32)
    a = jnp.sum(bits * (index * jnp.uint32(2) + jnp.uint32(1)))  # odd weights: any one change shows
    b = jnp.sum(_mix(bits ^ (index * jnp.uint32(0x9E3779B9))))  # nonlinear: changes cannot cancel
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else True
    return jnp.stack([a, b, jnp.uint32(bits.shape[0]), jnp.uint32(finite)])


def summarise(tree: Any) -> tuple[bool, dict[str, str]]:
    """``(finite, {leaf path: hex digest})`` of a pytree of (sharded) arrays.

    One small jitted program per leaf shape (compiled once each; a whole-tree program has
    thousands of reductions for a U-Net and compiles for minutes), all dispatched before
    one host fetch.
    """
    flat = jax.tree_util.tree_leaves_with_path(tree)
    summaries = jax.device_get(_replicated_value([_leaf_summary(x) for _, x in flat]))
    digests = {jax.tree_util.keystr(p): "".join(f"{int(v):08x}" for v in s[:3])
               for (p, _), s in zip(flat, summaries)}
    return all(bool(s[3]) for s in summaries), digests


def _replicated_value(tree: Any) -> Any:
    # Outputs of the jitted summary are replicated; on several hosts read the local copy.
    return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)


def data_digest(data_state: Any) -> str:
    """SHA-256 of the data state's canonical JSON (its contents are the pipeline's business)."""
    return hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------ manager

class Checkpointer:
    """Keeps the last ``max_to_keep`` checkpoints in ``workdir/checkpoints``.

    Args:
      workdir: the experiment's working directory.
      max_to_keep: checkpoints kept (older ones are deleted); at least 1.
      async_save: return from :meth:`save` while writing in the background.
    """

    def __init__(self, workdir: str, max_to_keep: int, async_save: bool = True):
        if not isinstance(max_to_keep, int) or max_to_keep < 1:
            # Orbax treats 0 as "keep none" and deletes every checkpoint, old runs' included.
            raise ValueError(f"config.train.max_to_keep={max_to_keep!r} must be an integer >= 1")
        self.workdir = os.path.abspath(workdir) if "://" not in workdir else workdir
        self.directory = os.path.join(self.workdir, "checkpoints")
        if jax.process_count() > 1:  # (exist_ok: every process may race to create it)
            epath.Path(self.directory).mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=jax.process_count() == 1,
            enable_async_checkpointing=async_save, multiprocessing_options=_barriers())
        # Handlers named up front, so that item metadata can be read before restoring.
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    "data": ocp.JsonCheckpointHandler(),
                    "fingerprint": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=handlers)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: Any) -> None:
        """Starts saving (async unless configured otherwise); a no-op if ``step`` exists.

        Raises ``FloatingPointError`` (and writes nothing) if any floating leaf of
        ``state`` is NaN or infinite, naming the newest checkpoint already saved.
        """
        if step in self.manager.all_steps():
            return
        # The checksums are ~one program per leaf: dispatched while the steps that produce
        # ``state`` are still queued, they could take every device slot those need
        # (ops.MAX_IN_FLIGHT); a save syncs with the host anyway.
        jax.block_until_ready(state)
        finite, leaves = summarise(state)
        if not finite:
            self.wait()
            raise FloatingPointError(
                f"non-finite training state at step {step}; not saved. Last good checkpoint: "
                f"{self.latest_step() or 'none'} in {self.directory} (lower config.optim.lr or "
                f"config.optim.clip_norm)")
        fingerprint = {"version": FINGERPRINT_VERSION, "leaves": leaves,
                       "data": data_digest(data_state)}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            fingerprint=ocp.args.JsonSave(fingerprint)), force=True)

    def restore(self, step: int, target: Any) -> tuple[Any, Any]:
        """Restores and verifies ``step`` onto the shapes, dtypes and shardings of ``target``.

        ``target`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings (e.g. from
        ``jax.eval_shape`` plus the current mesh's shardings).

        Raises:
          CheckpointError: the checkpoint holds a different tree or shapes (another config).
          CorruptCheckpoint: it cannot be read, or its arrays or data state do not match
            the saved fingerprint, or it holds non-finite values.
        """
        path = os.path.join(self.directory, str(step))
        self._check_structure(step, target, path)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
                fingerprint=ocp.args.JsonRestore()))
        except ValueError as e:
            if "tree structures do not match" in str(e):  # e.g. another optimizer's state
                raise _different_config(path, _first_line(e)) from e
            raise CorruptCheckpoint(f"unreadable (ValueError: {_first_line(e)})") from e
        except Exception as e:  # Orbax/TensorStore raise many types for unreadable files.
            raise CorruptCheckpoint(f"unreadable ({type(e).__name__}: {_first_line(e)})") from e
        _verify(restored.state, restored.data, restored.fingerprint)
        return restored.state, restored.data

    def restore_latest(self, target: Any,
                       check_data: Optional[Callable[[int, Any], None]] = None
                       ) -> Optional[tuple[int, Any, Any]]:
        """The newest checkpoint that verifies: ``(step, state, data_state)``; ``None`` if
        there is no checkpoint at all.

        Each newer checkpoint that is corrupt (see :meth:`restore`; ``check_data(step,
        data_state)`` may raise :class:`CorruptCheckpoint` too) is moved aside to
        ``workdir/checkpoints_rejected/`` with a one-line warning. Raises
        :class:`CheckpointError` if checkpoints existed but none verifies.
        """
        rejected = []
        for step in reversed(self.all_steps()):
            reason = None
            try:
                state, data = self.restore(step, target)
                if check_data is not None:
                    check_data(step, data)
            except CorruptCheckpoint as e:
                reason = str(e)
            reason = _agree(reason)
            if reason is None:
                return step, state, data
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

    def _check_structure(self, step: int, target: Any, path: str) -> None:
        """A different tree or shapes means another config (stop), not corruption."""
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


def _verify(state: Any, data_state: Any, fingerprint: Any) -> None:
    """Raises :class:`CorruptCheckpoint` unless the restored items match the fingerprint."""
    if not isinstance(fingerprint, dict) or fingerprint.get("version") != FINGERPRINT_VERSION:
        raise CorruptCheckpoint("no fingerprint to verify against")
    finite, leaves = summarise(state)
    bad = [k for k, v in leaves.items() if fingerprint["leaves"].get(k) != v]
    if bad or set(leaves) != set(fingerprint["leaves"]):
        raise CorruptCheckpoint(f"fingerprint mismatch in {len(bad)} array(s), e.g. {bad[:2]}")
    if fingerprint.get("data") != data_digest(data_state):
        raise CorruptCheckpoint("fingerprint mismatch in the data-iterator state")
    if not finite:
        raise CorruptCheckpoint("non-finite values")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""
