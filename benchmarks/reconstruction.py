"""L_rec at initialisation against δ: why the image configs use δ = 1e-3.

At initialisation the neural forward process gives q(z_0 | x) = N(x, δ² I) for any
network, so L_rec = E −log p(x | z_0) depends on δ and the data only. Run::

    python -m benchmarks.reconstruction

It prints L_rec in bits/dim for the discrete decoder on the digits training set and on
CIFAR-shaped uniform-noise images (CIFAR-10 itself cannot be downloaded here; the term
is nearly data-independent because every pixel sits on a bin centre).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import app

from nfdm_jax import decoders, forward, losses
from nfdm_jax.data import sources


def reconstruction_bpd(pixels: np.ndarray, delta: float, key: jax.Array) -> float:
    """Mean L_rec in bits/dim of uint8 ``pixels`` ``[B, *D]`` under the discrete decoder."""
    x = decoders.centred(jnp.asarray(pixels))
    zero_net = lambda x, t: (jnp.zeros_like(x), jnp.zeros_like(x))  # noqa: E731
    fwd = forward.neural_forward(zero_net, delta)
    eps = jax.random.normal(key, x.shape)
    nats = losses.reconstruction_loss(fwd, decoders.discrete_nll(delta), x, eps)
    return float(jnp.mean(nats)) / (math.prod(x.shape[1:]) * math.log(2.0))


def main(_) -> None:
    key = jax.random.PRNGKey(0)
    data = {
        "digits (1500×8×8×1)": sources.digits("train").arrays["x"],
        "uniform 8-bit (256×32×32×3)": np.random.default_rng(0).integers(
            0, 256, (256, 32, 32, 3), dtype=np.uint8),
    }
    for name, pixels in data.items():
        for delta in (0.01, 3e-3, 1e-3):
            print(f"{name:30s} δ={delta:<6g} "
                  f"L_rec = {reconstruction_bpd(pixels, delta, key):.4f} bits/dim")


if __name__ == "__main__":
    app.run(main)
