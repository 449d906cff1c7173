"""Deterministic, resumable, per-process input iteration producing global ``jax.Array`` s.

The batch of step ``s`` is a pure function of (seed, s): each field's source is read
in a fresh permutation per epoch, ``permutation(seed, field, epoch)[pos·B:(pos+1)·B]``.
The iterator's whole state is therefore ``{"step", "seed"}``, saved with checkpoints.
Each process gathers only the rows of the global batch that its devices hold
(:func:`process_rows`), then :func:`jax.make_array_from_process_local_data` assembles
the global array without any cross-host traffic.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nfdm_jax.data.sources import Example, Source

Batch = dict[str, jax.Array]


def process_rows(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...],
                 axis: int) -> slice:
    """The contiguous range of ``axis`` that this process's devices hold under ``sharding``."""
    index_map = sharding.addressable_devices_indices_map(global_shape)
    ranges = {(s[axis].start or 0, global_shape[axis] if s[axis].stop is None else s[axis].stop)
              for s in index_map.values()}
    start, stop = min(r[0] for r in ranges), max(r[1] for r in ranges)
    covered = sum(b - a for a, b in ranges)
    if covered != stop - start:  # Meshes from mesh_utils keep each process's rows contiguous.
        raise ValueError(f"this process's rows {sorted(ranges)} are not contiguous")
    return slice(start, stop)


def _gather(source: Source, indices: np.ndarray) -> Example:
    take = getattr(source, "take", None)
    if take is not None:
        return take(indices)
    examples = [source[int(i)] for i in indices]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class BatchIterator:
    """Training batches ``{field: [steps_per_dispatch, global_batch, *shape]}`` as global arrays.

    Args:
      sources: batch field → source; each source's examples hold ``"x"``. Fields are
        drawn independently (bridges pair unrelated x_0 and x_1).
      global_batch: examples per step over all processes.
      mesh: the device mesh; the batch axis is sharded over ``"data"``.
      seed: the data seed.
      start_step: the step whose batch comes first (resuming).
      steps_per_dispatch: steps stacked on a leading axis for one ``lax.scan`` dispatch.
      prefetch: batches prepared ahead by a background thread.
    """

    def __init__(self, sources: Mapping[str, Source], global_batch: int, mesh: Mesh,
                 seed: int, start_step: int = 0, steps_per_dispatch: int = 1,
                 prefetch: int = 2):
        for field, source in sources.items():
            if len(source) < global_batch:
                raise ValueError(f"{field!r} has {len(source)} examples, fewer than the "
                                 f"global batch {global_batch}")
        self.sources = dict(sources)
        self.global_batch = global_batch
        self.seed = seed
        self.steps_per_dispatch = steps_per_dispatch
        self.sharding = NamedSharding(mesh, P(None, "data"))
        self._rows = process_rows(self.sharding, (steps_per_dispatch, global_batch), axis=1)
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._step = start_step  # the step of the next batch handed out
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(start_step,), daemon=True)
        self._thread.start()

    @property
    def state(self) -> dict[str, int]:
        """Everything needed to resume: the next step and the seed (JSON-serialisable)."""
        return {"step": self._step, "seed": self.seed}

    def global_indices(self, field_index: int, field: str, step: int) -> np.ndarray:
        """Indices into ``sources[field]`` of the global batch of ``step``, ``[global_batch]``."""
        n = len(self.sources[field])
        epoch, pos = divmod(step, n // self.global_batch)
        key = (field_index, epoch)
        if key not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != field_index}
            self._perms[key] = np.random.default_rng([self.seed, field_index, epoch]).permutation(n)
        return self._perms[key][pos * self.global_batch:(pos + 1) * self.global_batch]

    def local_batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of steps ``step .. step + steps_per_dispatch − 1``."""
        out = {}
        for i, (field, source) in enumerate(self.sources.items()):
            per_step = [_gather(source, self.global_indices(i, field, s)[self._rows])["x"]
                        for s in range(step, step + self.steps_per_dispatch)]
            out[field] = np.stack(per_step)
        return out

    def _global(self, local: dict[str, np.ndarray]) -> Batch:
        k, rows = self.steps_per_dispatch, self.global_batch
        return {f: jax.make_array_from_process_local_data(
            self.sharding, v, (k, rows) + v.shape[2:]) for f, v in local.items()}

    def _produce(self, step: int) -> None:
        try:
            while not self._stop.is_set():
                item = self._global(self.local_batch(step))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += self.steps_per_dispatch
        except Exception as e:  # Re-raised in the consumer, which owns error reporting.
            self._queue.put(e)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        self._step += self.steps_per_dispatch
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def eval_batches(sources: Mapping[str, Source], global_batch: int, mesh: Mesh
                 ) -> Iterator[dict[str, Any]]:
    """One ordered pass over the first source: every example exactly once.

    The last batch is padded by repeating example 0 and ``"mask"`` ``[global_batch]``
    (float32) marks real examples, so no example is dropped and shapes never change.
    Other fields (a bridge's x_1) are read in order, cycling if shorter.
    """
    sharding = NamedSharding(mesh, P("data"))
    rows = process_rows(sharding, (global_batch,), axis=0)
    first = next(iter(sources))
    n = len(sources[first])
    for start in range(0, n, global_batch):
        index = np.arange(start, start + global_batch)
        mask = (index < n).astype(np.float32)
        local = {f: _gather(s, np.where(mask > 0, index, 0)[rows] % len(s))["x"]
                 for f, s in sources.items()}
        local["mask"] = mask[rows]
        yield {f: jax.make_array_from_process_local_data(sharding, v, (global_batch,) + v.shape[1:])
               for f, v in local.items()}
