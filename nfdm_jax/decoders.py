"""Likelihood conventions: data scaling and the decoder p(x | z_0) (SPEC §1.3).

Two conventions for 8-bit images, and one for real-valued data:

* ``"discrete"``: pixels k ∈ {0..255} map to bin centres v_k = (2k + 1)/256 − 1;
  p(x | z_0) is a per-pixel categorical with logits −½((z_0 − v_k)/δ)² (VDM).
  The NELBO bounds the discrete NLL; no dequantization, no Jacobian.
* ``"dequantized"``: x̃ = 2(k + u)/256 − 1 with u ~ U[0, 1); p(x̃ | z_0) = N(z_0, δ²).
  The continuous density of k + u is that of x̃ times (2/256)^D, so the bound on
  −log P(k) adds D log 128 nats (:data:`DEQUANT_LOG_JACOBIAN_PER_DIM`).
* ``"continuous"``: real data (2-D densities), Gaussian decoder, no offset.

A decoder is ``decoder_nll(z0, x) -> nats`` with ``z0``, ``x`` ``[B, *D]`` and
output ``[B]``.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nfdm_jax.ops import sum_per_example

Array = jax.Array
DecoderNLL = Callable[[Array, Array], Array]

NUM_VALUES = 256
DEQUANT_LOG_JACOBIAN_PER_DIM = math.log(NUM_VALUES / 2)
CONVENTIONS = ("discrete", "dequantized", "continuous")


def bin_centres(num_values: int = NUM_VALUES) -> Array:
    """v_k = (2k + 1) / num_values − 1 for k = 0..num_values−1, shape ``[num_values]``."""
    return (2.0 * jnp.arange(num_values) + 1.0) / num_values - 1.0


def centred(pixels: Array) -> Array:
    """Integer pixels ``[B, *D]`` in {0..255} → bin centres in (−1, 1), float32."""
    return (2.0 * pixels.astype(jnp.float32) + 1.0) / NUM_VALUES - 1.0


def dequantized(key: Array, pixels: Array) -> Array:
    """Integer pixels → x̃ = 2(k + u)/256 − 1 with u ~ U[0, 1) per pixel, float32."""
    u = jax.random.uniform(key, pixels.shape)
    return 2.0 * (pixels.astype(jnp.float32) + u) / NUM_VALUES - 1.0


def gaussian_nll(delta: float | Array) -> DecoderNLL:
    """−log N(x; z_0, δ² I) in nats per example (δ a float or a traced scalar)."""
    const = jnp.log(delta) + 0.5 * math.log(2.0 * math.pi)

    def nll(z0: Array, x: Array) -> Array:
        return sum_per_example(0.5 * jnp.square((x - z0) / delta) + const)

    return nll


def discrete_nll(delta: float | Array, num_values: int = NUM_VALUES) -> DecoderNLL:
    """VDM's per-pixel categorical decoder; ``x`` must hold bin centres (:func:`centred`).

    Memory is ``B · D · num_values`` floats for the logits.
    """
    centres = bin_centres(num_values)

    def nll(z0: Array, x: Array) -> Array:
        grid = jnp.reshape(centres, (1,) * z0.ndim + centres.shape)
        logits = -0.5 * jnp.square((z0[..., None] - grid) / delta)
        index = jnp.round((x + 1.0) * (num_values / 2) - 0.5).astype(jnp.int32)
        log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                                    index[..., None], axis=-1)[..., 0]
        return -sum_per_example(log_p)

    return nll


def make_decoder(convention: str, delta: float | Array) -> DecoderNLL:
    """The decoder of a likelihood convention (one of :data:`CONVENTIONS`)."""
    if convention == "discrete":
        return discrete_nll(delta)
    if convention in ("dequantized", "continuous"):
        return gaussian_nll(delta)
    raise ValueError(f"Unknown likelihood convention {convention!r}; use one of {CONVENTIONS}.")


def log_jacobian_per_dim(convention: str) -> float:
    """Nats per dimension added to a NELBO in this convention to bound −log P(data)."""
    return DEQUANT_LOG_JACOBIAN_PER_DIM if convention == "dequantized" else 0.0


def to_pixels(x: Array) -> Array:
    """Values in [−1, 1] → uint8 pixels {0..255}: the inverse of :func:`centred` (the nearest
    bin centre, the discrete decoder's mode), clipped. NumPy in, NumPy out; JAX in, JAX out."""
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.clip(xp.round((x + 1.0) * 128.0 - 0.5), 0, 255).astype(xp.uint8)
