"""Deterministic, resumable, per-process input on grain, producing global ``jax.Array`` s.

Training: each field has one infinite ``grain.MapDataset`` stream of positions into its
source, ``range(n).shuffle(seed_f).repeat()`` (a fresh permutation per epoch), and the
global batch of step ``s`` is the examples at the stream's elements ``[s·B, (s+1)·B)``,
row for row: a pure function of (seed, s), whatever the number of processes. Process p of
P holds rows ``[p·B/P, (p+1)·B/P)``: it batches the stream B/P at a time and keeps every
P-th batch (``batch(B/P)[p::P]``; sharding the elements first, ``[p::P]``, would give a
process every P-th row and change which example sits in which row, and so its t and ε,
with P). It reads its examples in one ``map``, so processes read disjoint examples and
only their own;
:func:`jax.make_array_from_process_local_data` then assembles the global array with no
cross-host traffic. grain's thread pool reads ahead (``prefetch`` dispatches).

The iterator's state is ``{"step", "seed"}`` (JSON), saved with each checkpoint: the
absolute step, rather than grain's own ``{"next_index"}``, which counts dispatches of
one particular slice and so would not survive a change of ``steps_per_dispatch`` or of
the process count. Resuming rebuilds the stream and slices it at ``step``.

Evaluation: :func:`eval_batches` is one ordered pass over a split, padded with a mask.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nfdm_jax.data.sources import Source

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


def _shard(rows: slice, global_batch: int) -> tuple[int, int]:
    """(shard index, shard count) of a process holding ``rows`` of every global batch."""
    local = rows.stop - rows.start
    return rows.start // local, global_batch // local


def field_seed(seed: int, field_index: int) -> int:
    """The shuffle seed of one field (fields are drawn independently), in [0, 2³²)."""
    return int(np.random.SeedSequence([seed, field_index]).generate_state(1)[0])


def index_stream(length: int, seed: int, field_index: int) -> grain.MapDataset:
    """The infinite stream of positions into one field's source: epoch after epoch, each a
    fresh permutation (grain's ``shuffle`` then ``repeat``)."""
    return grain.MapDataset.range(length).shuffle(seed=field_seed(seed, field_index)).repeat()


def local_positions(length: int, seed: int, field_index: int, shard: tuple[int, int],
                    local: int) -> grain.MapDataset:
    """Element s: the positions ``[local]`` of process ``shard = (p, P)``'s rows of step s,
    the global batch's rows ``[p·local, (p+1)·local)``."""
    index, count = shard
    return index_stream(length, seed, field_index).batch(local)[index::count]


def gather(source: Source, indices: np.ndarray) -> np.ndarray:
    """``source``'s examples at ``indices`` stacked, ``[len(indices), ...]`` (the ``"x"``
    field; one vectorised read when the source has ``take``, as in-memory arrays do)."""
    take = getattr(source, "take", None)
    if take is not None:
        return take(np.asarray(indices))["x"]
    return np.stack([source[int(i)]["x"] for i in indices])


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
      prefetch: dispatches read ahead by grain's threads.
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
        self._shard = _shard(self._rows, global_batch)
        self._step = start_step  # the step of the next batch handed out
        streams = {f: self.local_stream(i, s) for i, (f, s) in enumerate(self.sources.items())}
        # Element s of `per_step` is this process's rows of step start_step + s.
        per_step = grain.MapDataset.range(start_step, start_step + 2 ** 62).map(
            lambda step: {f: stream[step] for f, stream in streams.items()})
        dispatches = per_step.batch(steps_per_dispatch)
        self._iter = dispatches.to_iter_dataset(grain.ReadOptions(
            num_threads=1, prefetch_buffer_size=prefetch)).__iter__()

    def local_stream(self, field_index: int, source: Source) -> grain.MapDataset:
        """This process's rows of every step of one field: element s is ``[b_local, ...]``.

        grain's elements are positions, not examples, until the last ``map``: its
        per-element cost (~20-30 µs here, most of it the index shuffle) would otherwise be
        paid again per example for the read, and the read is one vectorised ``take``.
        """
        positions = local_positions(len(source), self.seed, field_index, self._shard,
                                    self._rows.stop - self._rows.start)
        return positions.map(lambda indices: gather(source, indices))

    @property
    def state(self) -> dict[str, int]:
        """Everything needed to resume: the next step and the seed (JSON-serialisable)."""
        return {"step": self._step, "seed": self.seed}

    def global_indices(self, field_index: int, step: int) -> np.ndarray:
        """Positions in the field's source of the global batch of ``step``, ``[global_batch]``
        (the union over processes; this process holds those of :meth:`local_indices`)."""
        n = len(list(self.sources.values())[field_index])
        stream = index_stream(n, self.seed, field_index)
        return np.array([stream[i] for i in range(step * self.global_batch,
                                                  (step + 1) * self.global_batch)])

    def local_indices(self, field_index: int, step: int) -> np.ndarray:
        """Positions in the field's source of this process's rows of ``step``."""
        n = len(list(self.sources.values())[field_index])
        return np.asarray(local_positions(n, self.seed, field_index, self._shard,
                                          self._rows.stop - self._rows.start)[step])

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        local = next(self._iter)
        k, rows = self.steps_per_dispatch, self.global_batch
        self._step += k
        return {f: jax.make_array_from_process_local_data(self.sharding, v, (k, rows) + v.shape[2:])
                for f, v in local.items()}

    def close(self) -> None:
        close = getattr(self._iter, "close", None)
        if close is not None:
            close()


class _Padded:
    """A source padded to ``length`` with copies of example 0, and ``"mask"`` (1 real, 0 pad);
    every field is read at the same index (cycling a shorter second field)."""

    def __init__(self, sources: Mapping[str, Source], length: int):
        self.sources, self.length = dict(sources), length
        self.n = len(next(iter(self.sources.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        real = index < self.n
        i = index if real else 0
        out = {f: s[i % len(s)]["x"] for f, s in self.sources.items()}
        out["mask"] = np.float32(real)
        return out


def eval_batches(sources: Mapping[str, Source], global_batch: int, mesh: Mesh
                 ) -> Iterator[dict[str, Any]]:
    """One ordered pass over the first source: every example exactly once.

    The split is padded to a multiple of ``global_batch`` with copies of example 0 and
    ``"mask"`` ``[global_batch]`` (float32) marks real examples, so nothing is dropped and
    shapes never change. Other fields (a bridge's x_1) are read at the same index, cycling
    if shorter. Each process reads every P-th example of the padded split (grain's
    sharding); the global batch is the union, so ``mask``-weighted sums are exact.
    """
    sharding = NamedSharding(mesh, P("data"))
    rows = process_rows(sharding, (global_batch,), axis=0)
    index, count = _shard(rows, global_batch)
    n = len(next(iter(sources.values())))
    padded = _Padded(sources, -(-n // global_batch) * global_batch)
    local = grain.MapDataset.source(padded)[index::count].batch(rows.stop - rows.start)
    for i in range(len(local)):
        batch = local[i]
        yield {f: jax.make_array_from_process_local_data(sharding, v, (global_batch,) + v.shape[1:])
               for f, v in batch.items()}
