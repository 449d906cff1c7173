"""The one evaluator: every per-example objective term over a whole split, mean ± standard error.

Training's periodic eval, ``--mode=eval`` and the reports all call this module. A model's
``per_example(params, batch, key) -> {term: [B]}`` (e.g. ``models.Model.per_example``,
whose ``"bpd"`` term already includes the likelihood convention's log-Jacobian) is
evaluated K times per example with independent keys and averaged (SPEC §1.3: K = 1 for a
quick look, K = 128 for reported numbers).

Batches are padded to a fixed size and carry ``"mask"`` ``[B]`` (1 real, 0 padding; see
``nfdm_jax.data.eval_batches``); padded rows are computed and discarded on device with
``where``, so NaNs in padding cannot leak. Per-batch (count, mean, M2) moments stay on
device; one ``device_get`` at the end brings them to the host, where they are combined in
float64 (Chan et al.). The per-batch function is jitted once per (per_example, K, tile) and
follows the batch's sharding: global ``jax.Array``s sharded over a data mesh work as is.

Keys: batch ``b``, call ``k`` uses ``fold_in(fold_in(key, b), k)``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from functools import partial
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from nfdm_jax import ops

Array = jax.Array
# per_example(params, batch, key) -> {term: [B]}; batch maps field -> [B, ...].
PerExample = Callable[[Any, Mapping[str, Array], Array], Mapping[str, Array]]


class MeanSE(NamedTuple):
    """A mean over examples and its standard error (sample std / √count)."""

    mean: float
    se: float


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Every term's mean and standard error over a split.

    ``terms``: term → :class:`MeanSE` (the SE covers data and Monte Carlo variability, since
    each example's value is its own K-sample average); ``count``: real examples counted;
    ``num_t_samples``: K.
    """

    terms: dict[str, MeanSE]
    count: int
    num_t_samples: int

    def means(self) -> dict[str, float]:
        """``{term: mean}`` plus ``{term + "_stderr": se}``, for metric writers."""
        out = {k: v.mean for k, v in self.terms.items()}
        return out | {f"{k}_stderr": v.se for k, v in self.terms.items()}


def _check(num_t_samples: int, tile: int) -> None:
    if num_t_samples < 1:
        raise ValueError(f"num_t_samples must be >= 1, got {num_t_samples}")
    if tile < 1 or num_t_samples % tile:
        raise ValueError(f"tile={tile} must divide num_t_samples={num_t_samples}")


def batch_terms(per_example: PerExample, params: Any, batch: Mapping[str, Array], key: Array,
                num_t_samples: int, tile: int = 1) -> dict[str, Array]:
    """Each example's terms averaged over ``num_t_samples`` evaluations, ``{term: [B]}``.

    ``tile`` copies of the batch go through each call (K / tile calls in sequence): with
    times stratified over the batch (``losses.stratified_times``) each example then gets
    one t in each of ``tile`` strata, which lowers the variance of its average. Memory
    grows with ``tile``; ``tile = 1`` is the cheapest. ``"mask"`` is not passed on.
    """
    data = {k: v for k, v in batch.items() if k != "mask"}
    size = next(iter(data.values())).shape[0]
    tiled = {k: jnp.tile(v, (tile,) + (1,) * (v.ndim - 1)) for k, v in data.items()}

    def call(k: Array) -> dict[str, Array]:
        terms = per_example(params, tiled, jax.random.fold_in(key, k))
        return {n: jnp.mean(jnp.reshape(v, (tile, size)), axis=0) for n, v in terms.items()}

    calls = jax.lax.map(call, jnp.arange(num_t_samples // tile))  # [K / tile, B] per term
    return {n: jnp.mean(v, axis=0) for n, v in calls.items()}


@partial(jax.jit, static_argnames=("per_example", "num_t_samples", "tile"))
def _batch_moments(per_example: PerExample, params: Any, batch: Mapping[str, Array], key: Array,
                   *, num_t_samples: int, tile: int) -> dict[str, Array]:
    """``{term: [3]}``: (count, mean, sum of squared deviations) over the batch's real rows."""
    terms = batch_terms(per_example, params, batch, key, num_t_samples, tile)
    valid = batch["mask"] > 0
    count = jnp.sum(valid.astype(jnp.float32))

    def moments(v: Array) -> Array:
        v = v.astype(jnp.float32)
        mean = jnp.sum(jnp.where(valid, v, 0.0)) / jnp.maximum(count, 1.0)
        m2 = jnp.sum(jnp.where(valid, jnp.square(v - mean), 0.0))
        return jnp.stack([count, mean, m2])

    return {n: moments(v) for n, v in terms.items()}


def combine(moments: np.ndarray) -> tuple[float, float, int]:
    """Chan et al.'s pairwise combination of per-batch ``[n_batches, 3]`` (count, mean, M2)
    into (mean, standard error, count), in float64."""
    n, mean, m2 = 0.0, 0.0, 0.0
    for n_b, mean_b, m2_b in np.asarray(moments, np.float64):
        if n_b == 0:
            continue
        total = n + n_b
        delta = mean_b - mean
        mean += delta * n_b / total
        m2 += m2_b + delta * delta * n * n_b / total
        n = total
    stderr = math.sqrt(m2 / (n - 1) / n) if n > 1 else float("nan")
    return mean, stderr, int(n)


def mean_se(values: Any) -> MeanSE:
    """Mean and standard error (sample std / √count, float64; NaN for one value) of
    ``values`` ``[N]``: :func:`combine` of one batch, so every mean ± s.e. of the project
    (an evaluation, a report's seeds or points) is the same formula."""
    v = np.asarray(values, np.float64)
    mean, se, _ = combine(np.array([[v.size, v.mean(), np.sum(np.square(v - v.mean()))]]))
    return MeanSE(mean, se)


def evaluate(per_example: PerExample, params: Any, batches: Iterable[Mapping[str, Any]],
             key: Array, *, num_t_samples: int = 1, tile: int = 1,
             progress: Optional[Callable[[int], None]] = None) -> Evaluation:
    """Mean ± standard error of every term of ``per_example`` over one pass of ``batches``.

    Args:
      per_example: ``(params, batch, key) -> {term: [B]}``; pass the same object across
        calls to reuse the compiled evaluation.
      params: passed through.
      batches: padded batches, each with ``"mask"`` ``[B]`` (a fixed B avoids recompiles).
      key: PRNG key; batch b, call k uses ``fold_in(fold_in(key, b), k)``.
      num_t_samples: K, evaluations averaged per example.
      tile: batch copies per call (see :func:`batch_terms`).
      progress: called with the batch index after each batch is dispatched.
    """
    _check(num_t_samples, tile)
    per_batch = []
    for index, batch in enumerate(batches):
        per_batch.append(_batch_moments(per_example, params, batch, jax.random.fold_in(key, index),
                                        num_t_samples=num_t_samples, tile=tile))
        ops.bound_in_flight(per_batch)
        if progress is not None:
            progress(index + 1)
    if not per_batch:
        raise ValueError("evaluate got no batches.")
    fetched = jax.device_get(per_batch)
    terms, count = {}, 0
    for name in fetched[0]:
        mean, se, count = combine(np.stack([m[name] for m in fetched]))
        terms[name] = MeanSE(mean, se)
    return Evaluation(terms, count, num_t_samples)


def per_example_values(per_example: PerExample, params: Any,
                       batches: Iterable[Mapping[str, Any]], key: Array, *,
                       num_t_samples: int = 1, tile: int = 1) -> dict[str, np.ndarray]:
    """Every real example's K-averaged terms ``{term: [N]}`` (host NumPy, in batch order),
    with the same keys as :func:`evaluate`; for reports that need the values themselves.
    Single-process only (it gathers whole batches)."""
    _check(num_t_samples, tile)
    run = jax.jit(batch_terms, static_argnums=(0, 4, 5))
    out: dict[str, list[np.ndarray]] = {}
    for index, batch in enumerate(batches):
        terms = jax.device_get(run(per_example, params, batch, jax.random.fold_in(key, index),
                                   num_t_samples, tile))
        real = np.asarray(batch["mask"]) > 0
        for name, v in terms.items():
            out.setdefault(name, []).append(np.asarray(v)[real])
    return {name: np.concatenate(v) for name, v in out.items()}


def write_json(path: str, result: Evaluation, **record: Any) -> dict[str, Any]:
    """Writes ``record`` plus ``count``, ``num_t_samples`` and ``{term: {mean, stderr}}`` as
    JSON (creating parent folders) and returns the dict."""
    record = dict(record, count=result.count, num_t_samples=result.num_t_samples,
                  terms={k: {"mean": v.mean, "stderr": v.se} for k, v in result.terms.items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    return record
