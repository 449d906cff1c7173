"""Orbax checkpoints of the train state and the data-iterator state.

Checkpoints live in ``workdir/checkpoints/<step>/`` (plain step numbers) with two items:
``state`` (the :class:`TrainState`, sharded arrays) and ``data`` (the iterator's JSON
state). Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames
it when complete); restores place every array directly onto the current mesh's
shardings, so a run may resume on a different number of devices.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored into the current config."""


class Checkpointer:
    """Keeps the last ``max_to_keep`` checkpoints in ``workdir/checkpoints``.

    Args:
      workdir: the experiment's working directory.
      max_to_keep: checkpoints kept (older ones are deleted).
      async_save: return from :meth:`save` while writing in the background.
    """

    def __init__(self, workdir: str, max_to_keep: int, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, int]) -> None:
        """Starts saving (async unless configured otherwise); a no-op if ``step`` exists."""
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

    def restore(self, step: int, target: Any) -> tuple[Any, dict[str, int]]:
        """Restores ``step`` onto the shapes, dtypes and shardings of ``target``.

        ``target`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings (e.g. from
        ``jax.eval_shape`` plus the current mesh's shardings).
        """
        path = os.path.join(self.directory, str(step))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        except Exception as e:  # Orbax raises many types for unreadable or mismatched trees.
            raise CheckpointError(
                f"cannot restore checkpoint {path}: {type(e).__name__}: {e}\n"
                f"It is corrupt or was written by a different config (model, network or "
                f"optimizer). Use a fresh --workdir, or delete {path} to fall back to an "
                f"earlier checkpoint.") from e
        _check_shapes(restored.state, target, path)
        return restored.state, restored.data

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _check_shapes(restored: Any, target: Any, path: str) -> None:
    # Orbax can restore a tree whose arrays silently differ in shape from the target's.
    bad = [(jax.tree_util.keystr(k), a.shape, b.shape)
           for (k, a), b in zip(jax.tree_util.tree_leaves_with_path(restored),
                                jax.tree_util.tree_leaves(target)) if a.shape != b.shape]
    if bad:
        raise CheckpointError(f"checkpoint {path} does not match the config: "
                              + "; ".join(f"{k}: saved {a}, expected {b}" for k, a, b in bad[:5]))
