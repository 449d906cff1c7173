"""The ADM ("improved DDPM") U-Net and the NFDM forward-process network built from it."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from nfdm_jax.nets.layers import (
    AttentionBlock,
    Conv,
    ConvImpl,
    Dtype,
    Resample,
    ResBlock,
    group_norm,
    timestep_embedding,
)

# `train` (argument 3, counting self) selects dropout, so it must be static under remat.
_RematResBlock = nn.remat(ResBlock, static_argnums=(3,))
_RematAttentionBlock = nn.remat(AttentionBlock)
# "scores": residual blocks as they are, attention recomputing only its logits and softmax.
_RES_BLOCKS = {"none": ResBlock, "full": _RematResBlock, "scores": ResBlock}
_ATTENTION_BLOCKS = {"none": AttentionBlock, "full": _RematAttentionBlock,
                     "scores": functools.partial(AttentionBlock, remat_scores=True)}

# Values of `block_remat`, see `_ADMBackbone`.
BLOCK_REMATS = ("none", "attention")


class _ADMBackbone(nn.Module):
    """Architecture shared by `UNet` and `ForwardUNet` (ADM with resblock_updown=True and
    scale-shift norm).

    Attributes:
      channels: base width; level i has channels * channel_mults[i] channels.
      depth: residual blocks per level on the way down (ADM's num_res_blocks); the way up
        has depth + 1 per level.
      channel_mults: per-level width multipliers; len(channel_mults) - 1 downsamplings.
      num_heads: attention heads, used only when head_channels is None.
      head_channels: channels per attention head; takes precedence over num_heads.
      attention_resolutions: spatial sizes (pixels) at which attention follows each block.
      dropout: dropout rate inside residual blocks (active only with train=True).
      norm_groups: GroupNorm groups, capped at the channel count.
      cond_channels: channels of the conditioning image (0: unconditional).
      time_scale: t in [0, 1] is multiplied by this before the sinusoidal embedding.
      dtype: compute dtype; the output is always float32.
      param_dtype: parameter dtype.
      remat: rematerialise every residual/attention block in the backward pass.
      block_remat: what to rematerialise when not `remat`, one of `BLOCK_REMATS`: "none",
        or "attention" (only the attention logits and softmax, see
        `AttentionBlock.remat_scores`).
      conv: convolution implementation, see `layers.conv_as_matmul` ("auto": matmuls on
        CPU, XLA convolutions elsewhere).
    """

    channels: int = 128
    depth: int = 2
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    num_heads: int = 4
    head_channels: int | None = 64
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    norm_groups: int = 32
    cond_channels: int = 0
    time_scale: float = 1000.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    block_remat: str = "none"
    conv: ConvImpl = "auto"

    def _check_inputs(self, x: jax.Array, cond: jax.Array | None) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected x of shape [B, H, W, C], got {x.shape}")
        factor = 2 ** (len(self.channel_mults) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"spatial size {x.shape[1:3]} is not divisible by {factor}")
        got = 0 if cond is None else cond.shape[-1]
        if got != self.cond_channels:
            raise ValueError(f"expected {self.cond_channels} conditioning channels, got {got}")

    def _remat_mode(self) -> str:
        """"none" | "full" | "scores": what every block rematerialises."""
        if self.remat:
            return "full"
        if self.block_remat not in BLOCK_REMATS:
            raise ValueError(f"block_remat={self.block_remat!r}; known: {BLOCK_REMATS}")
        return {"none": "none", "attention": "scores"}[self.block_remat]

    def _res_block(self, out_channels: int, name: str,
                   resample: Resample = "none") -> ResBlock:
        cls = _RES_BLOCKS[self._remat_mode()]
        return cls(
            out_channels, self.dropout, self.norm_groups, resample,
            dtype=self.dtype, param_dtype=self.param_dtype, conv=self.conv, name=name,
        )

    def _attention(self, name: str) -> AttentionBlock:
        cls = _ATTENTION_BLOCKS[self._remat_mode()]
        return cls(
            self.num_heads, self.head_channels, self.norm_groups,
            dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        )

    def _dense(self, features: int, name: str) -> nn.Dense:
        return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    def _time_embedding(self, t: jax.Array, batch: int) -> jax.Array:
        """t: [] or [B] -> [B, 4 * channels] in `dtype`."""
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
        emb = timestep_embedding(t * self.time_scale, self.channels).astype(self.dtype)
        emb = self._dense(4 * self.channels, "time_dense0")(emb)
        return self._dense(4 * self.channels, "time_dense1")(nn.silu(emb))

    def _block(
        self, h: jax.Array, emb: jax.Array, out_channels: int, name: str, train: bool,
    ) -> jax.Array:
        """Residual block, followed by attention when h is at an attention resolution."""
        h = self._res_block(out_channels, f"{name}_res")(h, emb, train)
        if h.shape[1] in self.attention_resolutions:
            h = self._attention(f"{name}_attn")(h)
        return h

    @nn.compact
    def _unet(
        self, x: jax.Array, t: jax.Array, cond: jax.Array | None, train: bool, out_channels: int
    ) -> jax.Array:
        """x: [B, H, W, C], t: [] or [B], cond: [B, H, W, cond_channels] | None
        -> [B, H, W, out_channels] float32."""
        self._check_inputs(x, cond)
        if cond is not None:
            x = jnp.concatenate([x, cond.astype(x.dtype)], axis=-1)
        emb = self._time_embedding(t, x.shape[0])

        h = Conv(self.channels * self.channel_mults[0], 3, dtype=self.dtype,
                 param_dtype=self.param_dtype, impl=self.conv, name="in_conv")(x.astype(self.dtype))
        skips = [h]
        last = len(self.channel_mults) - 1
        for level, mult in enumerate(self.channel_mults):
            for i in range(self.depth):
                h = self._block(h, emb, self.channels * mult, f"down{level}_{i}", train)
                skips.append(h)
            if level != last:
                h = self._res_block(h.shape[-1], f"down{level}_resample", "down")(h, emb, train)
                skips.append(h)

        h = self._res_block(h.shape[-1], "mid_res0")(h, emb, train)
        h = self._attention("mid_attn")(h)
        h = self._res_block(h.shape[-1], "mid_res1")(h, emb, train)

        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for i in range(self.depth + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = self._block(h, emb, self.channels * mult, f"up{level}_{i}", train)
            if level != 0:
                h = self._res_block(h.shape[-1], f"up{level}_resample", "up")(h, emb, train)

        # The head runs in float32: it is cheap and it sets the precision of the output.
        h = nn.silu(group_norm(h, self.norm_groups, name="out_norm"))
        return Conv(out_channels, 3, nn.initializers.zeros, jnp.float32, self.param_dtype,
                    self.conv, name="out_conv")(h)


class UNet(_ADMBackbone):
    """ADM U-Net. See `_ADMBackbone` for the architecture attributes.

    Attributes:
      out_channels: output channels; None means the channels of x.

    Call: `(x [B, H, W, C], t [B] in [0, 1], cond [B, H, W, cond_channels] | None, *,
    train=False) -> [B, H, W, out_channels] float32`. With train=True and dropout > 0 a
    'dropout' rng must be passed to `apply`. The output is zero at initialisation.
    """

    out_channels: int | None = None

    def __call__(
        self, x: jax.Array, t: jax.Array, cond: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        out_channels = self.out_channels or x.shape[-1]
        return self._unet(x, t, cond, train, out_channels)


class ForwardUNet(_ADMBackbone):
    """NFDM forward-process network: (x, t) -> (m_bar, l_bar), each [B, H, W, C] float32.

    The same ADM U-Net with 2C output channels split in two. The zero-initialised output
    conv makes an untrained network return m_bar = l_bar = 0 exactly, i.e. the straight
    path mu = (1 - t) x, log sigma = (1 - t) log delta. Presets use half the channels of
    the reverse network (see `nfdm_jax.nets.presets`).

    Call: `(x [B, H, W, C], t [B], cond [B, H, W, cond_channels] | None, *, train=False)`.
    """

    def __call__(
        self, x: jax.Array, t: jax.Array, cond: jax.Array | None = None, *, train: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        out = self._unet(x, t, cond, train, 2 * x.shape[-1])
        m_bar, l_bar = jnp.split(out, 2, axis=-1)
        return m_bar, l_bar
