"""Building blocks of the ADM U-Net (Dhariwal & Nichol, 2021) in Flax linen.

Conventions: images are NHWC. Parameters are stored in `param_dtype` (float32 by default)
while matmuls/convolutions run in `dtype`; normalisation statistics, softmax logits and
time-embedding sinusoids are always computed in float32 because bfloat16 is too coarse
for them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Resample = Literal["none", "down", "up"]


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding of (already scaled) times.

    Args:
      t: [B] times; for t in [0, 1] scale them (e.g. by 1000) first so that the
        frequencies spread over the unit interval.
      dim: embedding width, must be even.
      max_period: the longest period of the sinusoids.

    Returns:
      [B, dim] float32, cosines in the first half and sines in the second (ADM order).
    """
    if dim % 2:
        raise ValueError(f"timestep embedding width must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def group_norm(x: jax.Array, groups: int, name: str | None = None) -> jax.Array:
    """GroupNorm in float32 over the last axis. [..., C] -> [..., C] float32.

    `groups` is capped at C so that tiny test networks can keep the ADM default of 32.
    Must be called inside a compact method (it creates a submodule).
    """
    num_groups = min(groups, x.shape[-1])
    # epsilon 1e-5 matches PyTorch's GroupNorm used by ADM (flax's default is 1e-6).
    norm = nn.GroupNorm(
        num_groups=num_groups, epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name
    )
    return norm(x.astype(jnp.float32))


def _patches(x: jax.Array, k: int) -> jax.Array:
    """'SAME'-padded k×k patches: [B, H, W, C] -> [B, H, W, k*k*C], ordered (dy, dx, c)
    to match a kernel [k, k, C, O] reshaped to [k*k*C, O]."""
    if k == 1:
        return x
    p = k // 2
    h, w = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    return jnp.concatenate(
        [xp[:, dy:dy + h, dx:dx + w, :] for dy in range(k) for dx in range(k)], axis=-1)


ConvImpl = Literal["auto", "xla", "matmul"]
CONV_IMPLS = ("auto", "xla", "matmul")


def resolve_conv(impl: ConvImpl, platform: str) -> ConvImpl:
    """The implementation ``impl`` means on ``platform`` ("cpu", "gpu", "tpu"): "auto" is
    "matmul" on CPU, where XLA's small convolutions, and above all their gradients, run ~20x
    slower than the same FLOPs as a matmul (digits step: 90 % of its time in 341
    convolutions), and "xla" on GPUs and TPUs, which need no k²-fold patch buffers."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv implementation {impl!r}; choose from {CONV_IMPLS}")
    return ("matmul" if platform == "cpu" else "xla") if impl == "auto" else impl


def conv_as_matmul(impl: ConvImpl) -> bool:
    """Whether :class:`Conv` runs as one matmul over patches: :func:`resolve_conv` on the
    default backend. A program compiled for other devices (a TPU slice from a CPU host)
    resolves "auto" for them first (``benchmarks.train_step.Step``)."""
    return resolve_conv(impl, jax.default_backend()) == "matmul"


class Conv(nn.Module):
    """Stride-1 'SAME' convolution with an odd square kernel, NHWC; the parameters
    (``kernel`` [k, k, C, O], ``bias`` [O]) and the result are those of ``nn.Conv``.

    With ``impl`` "matmul" (or "auto" on CPU, :func:`conv_as_matmul`) it is computed as
    [B·H·W, k²C] @ [k²C, O] on explicit patches; otherwise as an XLA convolution.
    """

    features: int
    kernel_size: int = 3
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if k % 2 == 0:
            raise ValueError(f"Conv needs an odd kernel size, got {k}")
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if conv_as_matmul(self.impl):
            y = jnp.dot(_patches(x, k), kernel.reshape(-1, self.features))
        else:
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def downsample(x: jax.Array) -> jax.Array:
    """2x2 average pooling. [B, H, W, C] -> [B, H/2, W/2, C]."""
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


def upsample(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling. [B, H, W, C] -> [B, 2H, 2W, C]."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


_RESAMPLERS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "none": lambda x: x,
    "down": downsample,
    "up": upsample,
}


class ResBlock(nn.Module):
    """ADM residual block with scale-shift (FiLM) time conditioning.

    x: [B, H, W, C_in], emb: [B, E] -> [B, H', W', out_channels] in `dtype`, where
    H' is H/2, H or 2H for resample "down", "none" or "up" (ADM's resblock_updown).
    """

    out_channels: int
    dropout: float = 0.0
    groups: int = 32
    resample: Resample = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv: ConvImpl = "auto"

    def _conv(
        self, features: int, kernel: int, zero: bool = False, name: str | None = None
    ) -> Conv:
        init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
        return Conv(features, kernel, init, self.dtype, self.param_dtype, self.conv, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
        # `train` is positional so nn.remat can mark it static (static_argnums=(3,)).
        resample = _RESAMPLERS[self.resample]
        h = nn.silu(group_norm(x, self.groups, name="in_norm")).astype(self.dtype)
        # ADM resamples after the first norm/activation so the conv runs at the new size.
        h = self._conv(self.out_channels, 3, name="in_conv")(resample(h))
        x = resample(x)

        scale_shift = nn.Dense(
            2 * self.out_channels, dtype=self.dtype, param_dtype=self.param_dtype, name="emb_proj"
        )(nn.silu(emb))
        scale_shift = scale_shift.astype(jnp.float32).reshape(-1, 1, 1, 2 * self.out_channels)
        scale, shift = jnp.split(scale_shift, 2, axis=-1)
        h = group_norm(h, self.groups, name="out_norm") * (1.0 + scale) + shift
        h = nn.silu(h).astype(self.dtype)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        # Zero init makes every block start as the identity, which stabilises deep U-Nets.
        h = self._conv(self.out_channels, 3, zero=True, name="out_conv")(h)

        if x.shape[-1] != self.out_channels:
            x = self._conv(self.out_channels, 1, name="skip")(x)
        return x.astype(self.dtype) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection.

    x: [B, H, W, C] -> [B, H, W, C] in `dtype`. The number of heads is C // head_channels
    when head_channels is set (ADM's num_head_channels takes precedence), else num_heads.

    `remat_scores`: keep only q, k and v for the backward pass and recompute the logits and
    softmax ([B, heads, HW, HW], twice each under `jax.jvp`) from them. Their size does not
    shrink with the width, so in a narrow network they outweigh the activations, while
    recomputing them costs 2·B·(HW)²·C FLOPs per matmul, a few % of a block's.
    """

    num_heads: int = 4
    head_channels: int | None = None
    groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat_scores: bool = False

    def _heads(self, channels: int) -> int:
        heads = channels // self.head_channels if self.head_channels else self.num_heads
        if heads < 1 or channels % heads:
            raise ValueError(f"{channels} channels cannot be split into {heads} attention heads")
        return heads

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        heads = self._heads(c)
        h = group_norm(x, self.groups, name="norm").astype(self.dtype)
        qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(h)
        qkv = qkv.reshape(b, height * width, 3, heads, c // heads)
        q, k, v = (qkv[:, :, i] for i in range(3))
        # jax.nn.dot_product_attention keeps logits and softmax in float32 for bf16 inputs
        # and can dispatch to fused kernels on GPU.
        attend = jax.nn.dot_product_attention
        if self.remat_scores:
            attend = jax.checkpoint(attend)
        out = attend(q, k, v).reshape(b, height, width, c)
        out = nn.Dense(
            c, kernel_init=nn.initializers.zeros, dtype=self.dtype,
            param_dtype=self.param_dtype, name="proj_out",
        )(out)
        return x.astype(self.dtype) + out
