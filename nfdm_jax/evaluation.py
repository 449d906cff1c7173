"""Test-set bits per dimension from the NELBO: one ordered pass over a whole split.

Every example is counted exactly once: batches are padded to a fixed size and carry a
``mask`` ``[B]`` (1 real, 0 padding); padded rows are computed and discarded on device
(with ``where``, so NaNs in padding cannot leak). Each image's NELBO is the average of
K independent evaluations (fresh t and ε each; SPEC §1.3: K = 1 for a quick look,
K = 128 for reported numbers). Per-batch statistics stay on device; a single
``device_get`` at the end brings them to the host, where they are combined in float64.

The per-batch function is jitted once per (loss, K, dim, convention) and is agnostic to
how the batch is laid out: pass global ``jax.Array``s sharded over a data mesh (each
host contributing its disjoint shard) and the reductions run under that sharding.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from nfdm_jax.decoders import CONVENTIONS, log_jacobian_per_dim
from nfdm_jax.losses import bits_per_dim

Array = jax.Array
# batch_nats(params, x, key) -> per-example NELBO in nats [B]
BatchNats = Callable[[Any, Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class BPDResult:
    """Test-set bits per dimension.

    ``bpd``: mean over examples of each example's K-sample NELBO in BPD (including the
    convention's log-Jacobian); ``stderr``: standard error of that mean (sample std of
    the per-example values / √count; it covers data and Monte Carlo variability);
    ``count``: examples counted; ``num_t_samples``: K; ``dim``: dimensions per example.
    """

    bpd: float
    stderr: float
    count: int
    num_t_samples: int
    convention: str
    dim: int


def pad_batches(data: np.ndarray, batch_size: int, *, data_key: str = "x"
                ) -> Iterator[dict[str, np.ndarray]]:
    """Yields ``{data_key: [batch_size, ...], "mask": [batch_size]}`` over ``data`` in order.

    The last batch is zero-padded to ``batch_size`` with mask 0; nothing is dropped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = data.shape[0]
    for start in range(0, n, batch_size):
        chunk = data[start:start + batch_size]
        real = chunk.shape[0]
        pad = np.zeros((batch_size - real,) + data.shape[1:], data.dtype)
        mask = np.concatenate([np.ones(real, np.float32), np.zeros(batch_size - real, np.float32)])
        yield {data_key: np.concatenate([chunk, pad], axis=0), "mask": mask}


@partial(jax.jit, static_argnames=("batch_nats", "num_t_samples", "log_jacobian"))
def _batch_moments(batch_nats: BatchNats, params: Any, x: Array, mask: Array, key: Array,
                   batch_index: Array, *, num_t_samples: int, log_jacobian: float) -> Array:
    """(count, mean, sum of squared deviations) of the batch's per-example BPD, ``[3]``."""
    batch_key = jax.random.fold_in(key, batch_index)

    def add_sample(k: int, total: Array) -> Array:
        return total + batch_nats(params, x, jax.random.fold_in(batch_key, k))

    out = jax.eval_shape(batch_nats, params, x, batch_key)
    nats = jax.lax.fori_loop(0, num_t_samples, add_sample,
                             jnp.zeros(out.shape, out.dtype)) / num_t_samples
    bpd = bits_per_dim(nats, math.prod(x.shape[1:]), log_jacobian)
    valid = mask > 0
    count = jnp.sum(valid.astype(jnp.float32))
    mean = jnp.sum(jnp.where(valid, bpd, 0.0)) / jnp.maximum(count, 1.0)
    m2 = jnp.sum(jnp.where(valid, jnp.square(bpd - mean), 0.0))
    return jnp.stack([count, mean, m2])


def _combine(moments: np.ndarray) -> tuple[float, float, int]:
    """Chan et al.'s pairwise combination of per-batch (count, mean, M2) → (mean, stderr, n)."""
    n, mean, m2 = 0.0, 0.0, 0.0
    for n_b, mean_b, m2_b in moments.astype(np.float64):
        if n_b == 0:
            continue
        total = n + n_b
        delta = mean_b - mean
        mean += delta * n_b / total
        m2 += m2_b + delta * delta * n * n_b / total
        n = total
    stderr = math.sqrt(m2 / (n - 1) / n) if n > 1 else float("nan")
    return mean, stderr, int(n)


def evaluate_bpd(batch_nats: BatchNats, params: Any, batches: Iterable[Mapping[str, Any]],
                 key: Array, *, convention: str, num_t_samples: int = 1,
                 data_key: str = "x") -> BPDResult:
    """Mean test-set BPD of the NELBO over one ordered pass of ``batches``.

    Args:
      batch_nats: ``batch_nats(params, x, key) -> [B]`` per-example NELBO in nats (any
        pure function, e.g. ``lambda p, x, k: losses.nelbo(...).total``); it must be the
        same object across calls to reuse the compiled evaluation.
      params: passed through to ``batch_nats``.
      batches: padded batches, each a mapping with ``data_key`` ``[B, *D]`` and
        ``"mask"`` ``[B]`` (e.g. :func:`pad_batches`); a fixed B avoids recompiles.
      key: PRNG key; batch b, sample k uses ``fold_in(fold_in(key, b), k)``.
      convention: the likelihood convention of ``batch_nats`` (``decoders.CONVENTIONS``);
        its log-Jacobian is added per dimension.
      num_t_samples: K, independent NELBO evaluations averaged per example.
      data_key: the batch entry holding the data.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"Unknown likelihood convention {convention!r}; use one of {CONVENTIONS}.")
    if num_t_samples < 1:
        raise ValueError(f"num_t_samples must be >= 1, got {num_t_samples}")
    per_batch, dim = [], None
    for index, batch in enumerate(batches):
        x = batch[data_key]
        dim = math.prod(x.shape[1:])
        per_batch.append(_batch_moments(
            batch_nats, params, x, batch["mask"], key, jnp.asarray(index, jnp.uint32),
            num_t_samples=num_t_samples, log_jacobian=log_jacobian_per_dim(convention)))
    if not per_batch:
        raise ValueError("evaluate_bpd got no batches.")
    mean, stderr, count = _combine(np.stack(jax.device_get(per_batch)))
    return BPDResult(bpd=mean, stderr=stderr, count=count, num_t_samples=num_t_samples,
                     convention=convention, dim=dim)


def write_bpd_json(path: str, result: BPDResult, *, checkpoint_step: Optional[int],
                   split: Optional[str] = None) -> dict[str, Any]:
    """Writes the evaluation record as JSON (creating parent folders) and returns it.

    Keys: convention, num_t_samples (K), split, split_size, dim, checkpoint_step, bpd, stderr.
    """
    record = {
        "convention": result.convention,
        "num_t_samples": result.num_t_samples,
        "split": split,
        "split_size": result.count,
        "dim": result.dim,
        "checkpoint_step": checkpoint_step,
        "bpd": result.bpd,
        "stderr": result.stderr,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    return record
