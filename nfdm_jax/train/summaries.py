"""Metrics output: TensorBoard event files (process 0 only) and console progress lines."""
from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np
from absl import logging


class MetricWriter:
    """Writes scalars to ``workdir/tensorboard`` from process 0; other processes only log."""

    def __init__(self, workdir: str):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter  # Imported lazily: slow to import.

            self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def scalars(self, step: int, values: Mapping[str, float], prefix: str) -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(f"{prefix}/{name}", float(value), step)
            self._writer.flush()
        if jax.process_index() == 0:
            text = "  ".join(f"{k}={_fmt(v)}" for k, v in sorted(values.items()))
            logging.info("[%s] step %d  %s", prefix, step, text)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """``image`` ``[H, W, C]`` uint8."""
        if self._writer is not None:
            self._writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
