"""Fréchet Inception Distance from feature statistics (float64 NumPy, host side).

FID = ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}).

The cross term is computed from the eigenvalues of the symmetric PSD matrix
Σ₁^{1/2} Σ₂ Σ₁^{1/2} (equal to those of Σ₁Σ₂), so no non-symmetric ``sqrtm`` and no
complex round-off, and it stays finite for singular covariances (N < 2048 samples).
Features come from ``nfdm_jax.metrics.inception`` (pool3, 2048-d); statistics of a
reference set are cached in an ``.npz`` with keys ``mu`` and ``sigma`` (the layout
pytorch-fid writes, so its precomputed files load too).
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, NamedTuple

import numpy as np


class FeatureStats(NamedTuple):
    """Mean ``[F]`` and covariance ``[F, F]`` (unbiased, ddof = 1) of features, float64."""

    mu: np.ndarray
    sigma: np.ndarray


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix, negative round-off clipped."""
    eigvals, eigvecs = np.linalg.eigh(0.5 * (matrix + matrix.T))
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``mu``: ``[F]``; ``sigma``: ``[F, F]``; computed in float64.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"Shape mismatch: mu {mu1.shape}, {mu2.shape}; "
                         f"sigma {sigma1.shape}, {sigma2.shape}.")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (middle + middle.T)), 0.0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


def feature_statistics(features: np.ndarray) -> FeatureStats:
    """Mean and covariance of features ``[N, F]`` (N ≥ 2)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"Need features [N >= 2, F], got shape {features.shape}.")
    return FeatureStats(features.mean(axis=0), np.cov(features, rowvar=False))


def streaming_statistics(extract: Callable[[np.ndarray], np.ndarray],
                         batches: Iterable[np.ndarray]) -> FeatureStats:
    """Statistics of ``extract(batch)`` ``[n, F]`` over all batches without storing features.

    Sums are taken in float64 around the first batch's mean, which keeps the
    covariance accurate when features have a large common offset.
    """
    shift, total, outer, count = None, None, None, 0
    for batch in batches:
        f = np.asarray(extract(batch), np.float64)
        if shift is None:
            shift = f.mean(axis=0)
            total, outer = np.zeros_like(shift), np.zeros((shift.size, shift.size))
        c = f - shift
        total += c.sum(axis=0)
        outer += c.T @ c
        count += f.shape[0]
    if count < 2:
        raise ValueError(f"Need at least 2 examples for statistics, got {count}.")
    mean_c = total / count
    sigma = (outer - count * np.outer(mean_c, mean_c)) / (count - 1)
    return FeatureStats(shift + mean_c, sigma)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets ``[N1, F]`` and ``[N2, F]``."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def save_statistics(path: str, stats: FeatureStats) -> None:
    """Writes ``mu`` and ``sigma`` to an ``.npz`` (creating parent folders)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:  # a file object stops NumPy appending ".npz" to the name
        np.savez(f, mu=stats.mu, sigma=stats.sigma)


def load_statistics(path: str) -> FeatureStats:
    """Reads statistics written by :func:`save_statistics` (or pytorch-fid)."""
    with np.load(path) as data:
        return FeatureStats(data["mu"].astype(np.float64), data["sigma"].astype(np.float64))


def cached_statistics(path: str, compute: Callable[[], FeatureStats]) -> FeatureStats:
    """Loads statistics from ``path`` if it exists, else computes, saves and returns them."""
    if os.path.exists(path):
        return load_statistics(path)
    stats = compute()
    save_statistics(path, stats)
    return stats
