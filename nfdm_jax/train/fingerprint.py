"""Checksums of a checkpoint's contents, computed on device and independent of the layout.

The fingerprint of a leaf is two 32-bit sums over its elements' bit patterns (one with
odd weights per flat index, one of a mixing hash of bits and index) and its size. Orbax
itself checksums only the index of zarr3 shards, not the data. Integer sums wrap exactly
and in any order, so the fingerprint is the same however the array is sharded, on any
number of devices and hosts. JSON items (the data-iterator state, the config record) are
checksummed by the SHA-256 of their canonical JSON.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp

from nfdm_jax import ops

VERSION = 1


class Mismatch(Exception):
    """Restored contents do not match their fingerprint (or are non-finite)."""


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
    thousands of reductions for a U-Net and compiles for minutes). The programs of sharded
    leaves hold cross-device reductions, so they are dispatched at most
    ``ops.MAX_IN_FLIGHT`` ahead, like the train loop's steps: with ~100 queued at once, 8
    CPU devices with ``mesh.model=2`` deadlocked in XLA's rendezvous (issue #23).
    """
    flat = jax.tree_util.tree_leaves_with_path(tree)
    outputs: list[jax.Array] = []
    for _, x in flat:
        outputs.append(_leaf_summary(x))
        ops.bound_in_flight(outputs)
    summaries = jax.device_get(_replicated_value(outputs))
    digests = {jax.tree_util.keystr(p): "".join(f"{int(v):08x}" for v in s[:3])
               for (p, _), s in zip(flat, summaries)}
    return all(bool(s[3]) for s in summaries), digests


def _replicated_value(tree: Any) -> Any:
    # Outputs of the jitted summary are replicated; on several hosts read the local copy.
    return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)


def json_digest(value: Any) -> str:
    """SHA-256 of a JSON-serialisable value's canonical JSON."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def make(state: Any, data_state: Any, record: Any) -> tuple[bool, dict[str, Any]]:
    """``(finite, fingerprint)`` of a checkpoint's items, the fingerprint as a JSON tree."""
    finite, leaves = summarise(state)
    return finite, {"version": VERSION, "leaves": leaves, "data": json_digest(data_state),
                    "config": json_digest(record)}


def verify(state: Any, data_state: Any, record: Any, fingerprint: Any) -> None:
    """Raises :class:`Mismatch` unless the restored items match ``fingerprint``.

    ``record`` is ``None`` for checkpoints written before configs were recorded (their
    fingerprint has no ``"config"`` entry).
    """
    if not isinstance(fingerprint, dict) or fingerprint.get("version") != VERSION:
        raise Mismatch("no fingerprint to verify against")
    finite, leaves = summarise(state)
    bad = [k for k, v in leaves.items() if fingerprint["leaves"].get(k) != v]
    if bad or set(leaves) != set(fingerprint["leaves"]):
        raise Mismatch(f"fingerprint mismatch in {len(bad)} array(s), e.g. {bad[:2]}")
    if fingerprint.get("data") != json_digest(data_state):
        raise Mismatch("fingerprint mismatch in the data-iterator state")
    if "config" in fingerprint and fingerprint["config"] != json_digest(record):
        raise Mismatch("fingerprint mismatch in the config record")
    if not finite:
        raise Mismatch("non-finite values")
