"""PNG figures of samples and trajectories (matplotlib, Agg canvas; no pyplot state).

Inputs are NumPy or JAX arrays on the host. Every ``save_*`` function writes one PNG,
creating parent folders.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import matplotlib
import numpy as np
from matplotlib import image as mpl_image
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from nfdm_jax import decoders


def _makedirs_for(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def image_grid(images: np.ndarray, ncols: Optional[int] = None, padding: int = 1) -> np.ndarray:
    """Tiles ``[N, H, W, C]`` (C = 1 or 3; uint8, or floats in [−1, 1] converted by
    :func:`nfdm_jax.decoders.to_pixels`) into one uint8 image ``[rows·(H+p)+p, cols·(W+p)+p, C]``.

    ``ncols`` defaults to ⌈√N⌉; empty cells and padding are black.
    """
    images = np.asarray(images)
    images = images if images.dtype == np.uint8 else decoders.to_pixels(images)
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.zeros((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c),
                    np.uint8)
    for i, image in enumerate(images):
        top = padding + (i // ncols) * (h + padding)
        left = padding + (i % ncols) * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def save_image_grid(images: np.ndarray, path: str, *, ncols: Optional[int] = None,
                    padding: int = 1) -> None:
    """Writes :func:`image_grid` of ``images`` as a PNG at the grid's pixel size."""
    grid = image_grid(images, ncols, padding)
    _makedirs_for(path)
    if grid.shape[-1] == 1:
        mpl_image.imsave(path, grid[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        mpl_image.imsave(path, grid)


def _axes(figsize: float = 5.0) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(figsize, figsize))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_aspect("equal")
    return fig, ax


def _finish(fig: Figure, ax: Axes, path: str, title: Optional[str],
            lim: Optional[float]) -> None:
    if title:
        ax.set_title(title)
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    fig.tight_layout()
    _makedirs_for(path)
    fig.savefig(path, dpi=100)


def save_scatter(points: np.ndarray, path: str, *, reference: Optional[np.ndarray] = None,
                 title: Optional[str] = None, lim: Optional[float] = None,
                 size: float = 1.0) -> None:
    """Scatter of 2-D samples ``[N, 2]``, optionally over reference (data) samples ``[M, 2]``."""
    fig, ax = _axes()
    if reference is not None:
        reference = np.asarray(reference)
        ax.scatter(reference[:, 0], reference[:, 1], s=size, c="tab:gray", alpha=0.5,
                   label="data")
    points = np.asarray(points)
    ax.scatter(points[:, 0], points[:, 1], s=size, c="tab:blue", label="samples")
    if reference is not None:
        ax.legend(loc="upper right", markerscale=4)
    _finish(fig, ax, path, title, lim)


def save_trajectories(zs: np.ndarray, path: str, *, ts: Optional[np.ndarray] = None,
                      max_paths: int = 64, obstacle: Optional[tuple[Sequence[float], float]] = None,
                      title: Optional[str] = None, lim: Optional[float] = None) -> None:
    """2-D trajectories ``zs`` ``[T, N, 2]`` (e.g. ``sampling.Trajectory.zs``), one colour each.

    ``zs[0]`` (prior end, t = ``ts[0]``, typically 1) is marked with circles and ``zs[-1]``
    (data end) with crosses; at most ``max_paths`` paths are drawn. ``obstacle`` =
    (centre, radius) draws a disc (the NFBM obstacle, SPEC §1.5).
    """
    zs = np.asarray(zs)[:, :max_paths]
    fig, ax = _axes()
    colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 1.0, zs.shape[1]))
    for path_zs, colour in zip(np.moveaxis(zs, 1, 0), colours):
        ax.plot(path_zs[:, 0], path_zs[:, 1], color=colour, linewidth=0.8, alpha=0.8)
    start, end = ("start", "end") if ts is None else (f"t = {float(ts[0]):g}",
                                                      f"t = {float(ts[-1]):g}")
    ax.scatter(zs[0, :, 0], zs[0, :, 1], s=12, marker="o", facecolors="none",
               edgecolors="k", label=start)
    ax.scatter(zs[-1, :, 0], zs[-1, :, 1], s=16, marker="x", c="tab:red", label=end)
    if obstacle is not None:
        centre, radius = obstacle
        ax.add_patch(Circle(tuple(centre), radius, color="tab:orange", alpha=0.3))
    ax.legend(loc="upper right")
    _finish(fig, ax, path, title, lim)
