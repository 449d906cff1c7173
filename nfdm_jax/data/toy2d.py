"""2-D synthetic densities, generated once from a seed into an in-memory source.

The official NFDM toy samples fresh points every step; a fixed pool of 2**20 points
per density is statistically indistinguishable for these models and keeps the input
pipeline deterministic and resumable like every other dataset.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from nfdm_jax.data.sources import ArraySource

Sampler = Callable[[np.random.Generator, int], np.ndarray]


def eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    """Centres 4·(cos kπ/4, sin kπ/4), std 0.5, all divided by √2 (SPEC §1.6); ``[n, 2]``."""
    angles = rng.integers(0, 8, n) * (np.pi / 4)
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return (centres + 0.5 * rng.standard_normal((n, 2))) / np.sqrt(2.0)


def two_moons(rng: np.random.Generator, n: int, noise: float = 0.1) -> np.ndarray:
    """The two interleaved half circles, centred and scaled to about [−2, 2]²; ``[n, 2]``."""
    upper = rng.random(n) < 0.5
    angle = rng.random(n) * np.pi
    x = np.where(upper, np.cos(angle), 1.0 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x - 0.5, y - 0.25], axis=-1) * 2.0
    return points + noise * rng.standard_normal((n, 2))


def checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform on the dark squares of a 4×4 board over [−2, 2]²; ``[n, 2]``."""
    x = rng.uniform(-2.0, 2.0, n)
    y = rng.uniform(0.0, 1.0, n) + rng.integers(0, 2, n) * 2.0 - 2.0
    y = y + np.floor(x) % 2  # shift every other column by one square
    return np.stack([x, y], axis=-1)


DENSITIES: dict[str, Sampler] = {
    "eight_gaussians": eight_gaussians,
    "two_moons": two_moons,
    "checkerboard": checkerboard,
}


def toy_source(name: str, seed: int, size: int,
               offset: tuple[float, float] = (0.0, 0.0)) -> ArraySource:
    """``size`` points of density ``name`` shifted by ``offset``, float32 ``[2]`` under ``"x"``."""
    if name not in DENSITIES:
        raise ValueError(f"unknown 2-D density {name!r}; choose from {sorted(DENSITIES)}")
    points = DENSITIES[name](np.random.default_rng(seed), size) + np.asarray(offset)
    return ArraySource({"x": points.astype(np.float32)})
