"""Flax linen networks of NFDM: the ADM U-Net, the forward-process networks, the
volatility MLP, the 2-D MLPs and the experiment presets."""

from nfdm_jax.nets.layers import AttentionBlock, ResBlock, timestep_embedding
from nfdm_jax.nets.mlp import ForwardMLP2D, MLP2D, PredictorMLP2D, VolatilityMLP
from nfdm_jax.nets.presets import (
    FORWARD_REMATS,
    PRESETS,
    Preset,
    get_preset,
    make_2d_networks,
    make_networks,
)
from nfdm_jax.nets.unet import ForwardUNet, UNet

__all__ = [
    "AttentionBlock",
    "FORWARD_REMATS",
    "ForwardMLP2D",
    "ForwardUNet",
    "MLP2D",
    "PRESETS",
    "PredictorMLP2D",
    "Preset",
    "ResBlock",
    "UNet",
    "VolatilityMLP",
    "get_preset",
    "make_2d_networks",
    "make_networks",
    "timestep_embedding",
]
