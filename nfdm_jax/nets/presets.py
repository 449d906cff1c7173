"""Network presets of the NFDM experiments and factories that build the network pairs.

| preset     | data     | channels | depth | mults   | head ch | attention | dropout | cond |
|------------|----------|----------|-------|---------|---------|-----------|---------|------|
| cifar10    | 32x32x3  | 256      | 2     | 1,2,2,2 | 64      | 16        | 0.0     | 0    |
| imagenet32 | 32x32x3  | 256      | 3     | 1,2,2,2 | 64      | 16,8      | 0.0     | 0    |
| imagenet64 | 64x64x3  | 192      | 3     | 1,2,3,4 | 64      | 32,16,8   | 0.1     | 0    |
| afhq64     | 64x64x3  | 192      | 3     | 1,2,3,4 | 64      | 32,16,8   | 0.1     | 3    |
| tiny       | 8x8x3    | 16       | 1     | 1,2     | 8       | 4         | 0.0     | 0    |
| digits     | 8x8x1    | 32       | 1     | 1       | 8       | (mid)     | 0.0     | 0    |

The table describes the reverse (predictor) network; the forward network uses the same
architecture at half the channels unless `forward_channels` says otherwise. afhq64 is a
bridge: both networks also see the source image, concatenated along channels.

`digits` is sized for a CPU: on 8x8 images one level (no resampling, attention only in the
middle block, 64 tokens) already sees the whole image after three residual blocks, and
at these sizes a step's time is set by its number of XLA ops rather than its FLOPs, so
the width is 32 at half the ops of `tiny` (5 residual blocks instead of 10, 1 attention
block instead of 4); compile time halves with the ops.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from nfdm_jax.nets.layers import ConvImpl, Dtype
from nfdm_jax.nets.mlp import ForwardMLP2D, PredictorMLP2D
from nfdm_jax.nets.unet import BLOCK_REMATS, ForwardUNet, UNet

# Values of `make_networks(forward_remat=...)` (`ForwardUNet.block_remat`).
FORWARD_REMATS = BLOCK_REMATS


@dataclasses.dataclass(frozen=True)
class Preset:
    """Architecture of a reverse/forward U-Net pair for images of `image_shape` (H, W, C)."""

    image_shape: tuple[int, int, int]
    channels: int
    depth: int
    channel_mults: tuple[int, ...]
    attention_resolutions: tuple[int, ...]
    dropout: float
    num_heads: int = 4
    head_channels: int | None = 64
    norm_groups: int = 32
    cond_channels: int = 0
    forward_channels: int | None = None

    def unet_kwargs(self, channels: int) -> dict[str, Any]:
        """Keyword arguments shared by `UNet` and `ForwardUNet`, at the given base width."""
        return dict(
            channels=channels,
            depth=self.depth,
            channel_mults=self.channel_mults,
            num_heads=self.num_heads,
            head_channels=self.head_channels,
            attention_resolutions=self.attention_resolutions,
            dropout=self.dropout,
            norm_groups=self.norm_groups,
            cond_channels=self.cond_channels,
        )


_IMAGENET64 = Preset(
    image_shape=(64, 64, 3), channels=192, depth=3, channel_mults=(1, 2, 3, 4),
    attention_resolutions=(32, 16, 8), dropout=0.1,
)

PRESETS: dict[str, Preset] = {
    "cifar10": Preset(
        image_shape=(32, 32, 3), channels=256, depth=2, channel_mults=(1, 2, 2, 2),
        attention_resolutions=(16,), dropout=0.0,
    ),
    "imagenet32": Preset(
        image_shape=(32, 32, 3), channels=256, depth=3, channel_mults=(1, 2, 2, 2),
        attention_resolutions=(16, 8), dropout=0.0,
    ),
    "imagenet64": _IMAGENET64,
    "afhq64": dataclasses.replace(_IMAGENET64, cond_channels=3),
    "tiny": Preset(
        image_shape=(8, 8, 3), channels=16, depth=1, channel_mults=(1, 2),
        attention_resolutions=(4,), dropout=0.0, head_channels=8, norm_groups=4,
    ),
    "digits": Preset(
        image_shape=(8, 8, 1), channels=32, depth=1, channel_mults=(1,),
        attention_resolutions=(), dropout=0.0, head_channels=8, norm_groups=8,
    ),
}


def get_preset(preset: str | Preset) -> Preset:
    """Look a preset up by name (see `PRESETS`); a `Preset` is returned unchanged."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}") from None


def make_networks(
    preset: str | Preset, dtype: Dtype = jnp.float32, remat: bool = False,
    conv: ConvImpl = "auto", forward_remat: str = "none",
) -> tuple[UNet, ForwardUNet]:
    """Build the (reverse predictor, forward-process) U-Nets of a preset.

    Both keep float32 parameters and return float32; `dtype` is the compute dtype.
    The predictor maps [B, H, W, C] to [B, H, W, C]; the forward net returns (m_bar, l_bar).
    `remat` rematerialises every block of both; `forward_remat` chooses what the forward
    net alone rematerialises (`ForwardUNet.block_remat`, one of `FORWARD_REMATS`).
    """
    if forward_remat not in FORWARD_REMATS:
        raise ValueError(f"unknown forward_remat {forward_remat!r}; known: {FORWARD_REMATS}")
    spec = get_preset(preset)
    forward_channels = spec.forward_channels or spec.channels // 2
    common = dict(dtype=dtype, param_dtype=jnp.float32, remat=remat, conv=conv)
    predictor = UNet(**spec.unet_kwargs(spec.channels), **common)
    # The forward net runs under jax.jvp, which keeps primal and tangent activations for
    # the backward pass; experiments/cifar10.py measures what each forward_remat saves.
    forward = ForwardUNet(**spec.unet_kwargs(forward_channels), **common,
                          block_remat=forward_remat)
    return predictor, forward


def make_2d_networks(
    hidden: int = 256, depth: int = 3, time_embed_dim: int = 32
) -> tuple[PredictorMLP2D, ForwardMLP2D]:
    """Build the (reverse predictor, forward-process) MLPs for low-dimensional data."""
    predictor = PredictorMLP2D(hidden=hidden, depth=depth, time_embed_dim=time_embed_dim)
    forward = ForwardMLP2D(hidden=hidden, depth=depth, time_embed_dim=time_embed_dim)
    return predictor, forward
