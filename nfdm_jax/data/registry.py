"""Datasets by config name: which sources feed training and evaluation.

``config.data.name`` selects one of :data:`DATASETS`. Images are uint8; the model
applies the likelihood convention (``config.data.convention``). Bridges (AFHQ, 2-D
bridges) have two independent fields: ``"x"`` (target, t = 0) and ``"x1"`` (source, t = 1).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import ml_collections
import numpy as np

from nfdm_jax.data import sources, toy2d
from nfdm_jax.data.sources import Source

Fields = dict[str, Source]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Training and evaluation sources, and the shape of one example of ``"x"``."""

    train: Fields
    eval: Fields
    shape: tuple[int, ...]


_TFDS = {  # config name -> (tfds name, eval split, image shape)
    "cifar10": ("cifar10", "test", (32, 32, 3)),
    "imagenet32": ("downsampled_imagenet/32x32", "validation", (32, 32, 3)),
    "imagenet64": ("downsampled_imagenet/64x64", "validation", (64, 64, 3)),
}


def _tfds(data: ml_collections.ConfigDict, seed: int) -> DatasetSpec:
    name, eval_split, shape = _TFDS[data.name]
    data_dir = data.data_dir or None
    return DatasetSpec(train={"x": sources.TfdsSource(name, "train", data_dir, shape)},
                       eval={"x": sources.TfdsSource(name, eval_split, data_dir, shape)},
                       shape=shape)


def _digits(data: ml_collections.ConfigDict, seed: int) -> DatasetSpec:
    return DatasetSpec(train={"x": sources.digits("train")}, eval={"x": sources.digits("test")},
                       shape=(8, 8, 1))


def _afhq64(data: ml_collections.ConfigDict, seed: int) -> DatasetSpec:
    root = data.data_dir or "afhq"

    def folder(split: str, animal: str) -> Source:
        return sources.image_folder(os.path.join(root, split, animal), 64)

    return DatasetSpec(train={"x": folder("train", data.target),
                              "x1": folder("train", data.source)},
                       eval={"x": folder("val", data.target), "x1": folder("val", data.source)},
                       shape=(64, 64, 3))


def _toy2d(data: ml_collections.ConfigDict, seed: int) -> DatasetSpec:
    # Separate seeds per field and split so that train, eval, x and x1 are independent draws.
    def make(density: str, offset: tuple[float, float], seed: int, size: int) -> Source:
        return toy2d.toy_source(density, seed, size, tuple(offset))

    train = {"x": make(data.target, data.target_offset, seed, data.size)}
    evals = {"x": make(data.target, data.target_offset, seed + 1, data.eval_size)}
    if data.source:
        train["x1"] = make(data.source, data.source_offset, seed + 2, data.size)
        evals["x1"] = make(data.source, data.source_offset, seed + 3, data.eval_size)
    return DatasetSpec(train=train, eval=evals, shape=(2,))


DATASETS: dict[str, Callable[[ml_collections.ConfigDict, int], DatasetSpec]] = {
    **{name: _tfds for name in _TFDS},
    "digits": _digits,
    "afhq64": _afhq64,
    "toy2d": _toy2d,
}


def example_shape(data: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The shape of one ``"x"`` example, without opening the dataset (for benchmarks)."""
    shapes = {**{k: v[2] for k, v in _TFDS.items()}, "digits": (8, 8, 1),
              "afhq64": (64, 64, 3), "toy2d": (2,)}
    if data.name not in shapes:
        raise ValueError(f"unknown dataset {data.name!r}; choose from {sorted(shapes)}")
    return shapes[data.name]


def make_datasets(data: ml_collections.ConfigDict, seed: int) -> DatasetSpec:
    """Opens the sources of ``config.data``; raises :class:`DatasetNotFoundError` if absent.

    ``seed`` (the config's one seed) only affects generated data (2-D densities).
    """
    if data.name not in DATASETS:
        raise ValueError(f"unknown dataset {data.name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[data.name](data, seed)


def channel_stats(data: ml_collections.ConfigDict, seed: int, max_examples: int = 10_000
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of the training split's ``"x"`` in the model's units.

    Images are taken as bin centres (2k + 1)/256 − 1 (the ``discrete`` convention; the
    ``dequantized`` one differs by a negligible 1/(128² · 12) in variance); real data as
    is. At most ``max_examples`` evenly spaced examples are read. Used by the configs to
    fill ``config.model.data_mean`` / ``data_std`` (the ``edm`` predictor's statistics),
    which are then saved with the run's config so that evaluation uses the same values.
    """
    source = make_datasets(data, seed).train["x"]
    idx = np.unique(np.linspace(0, len(source) - 1, min(len(source), max_examples)).astype(int))
    if isinstance(source, sources.ArraySource):
        x = source.take(idx)["x"]
    else:
        x = np.stack([source[int(i)]["x"] for i in idx])
    if x.dtype == np.uint8:
        x = (2.0 * x.astype(np.float64) + 1.0) / 256 - 1.0
    flat = np.reshape(np.asarray(x, np.float64), (-1, x.shape[-1]))
    return tuple(float(v) for v in flat.mean(0)), tuple(float(v) for v in flat.std(0))
