"""Metrics output: TensorBoard event files (process 0 only) and console lines.

TensorBoard gets every scalar; a console line shows only what a user reads while a run
goes (:data:`CONSOLE`): the objective, the gradient norm, the speed and the learning rate
in training, the bound and its standard error in evaluation.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import jax
import numpy as np
from absl import logging


# The fields of a console line per prefix, in this order, where present. "loss" is the
# objective training minimises (total / D; NFDM-OT's only name), "bpd" the bound in bits/dim.
CONSOLE: dict[str, tuple[str, ...]] = {
    "train": ("loss", "bpd", "grad_norm", "steps_per_sec", "lr"),
    "eval": ("bpd", "bpd_stderr", "loss", "loss_stderr"),
}


class MetricWriter:
    """Writes scalars to ``workdir/tensorboard`` from process 0; other processes only log."""

    def __init__(self, workdir: str):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter  # Imported lazily: slow to import.

            self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def scalars(self, step: int, values: Mapping[str, float], prefix: str) -> None:
        """Every value to TensorBoard as ``prefix/name``; the :data:`CONSOLE` fields of
        ``prefix`` (all values for another prefix) to the log as one line."""
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(f"{prefix}/{name}", float(value), step)
            self._writer.flush()
        if jax.process_index() == 0:
            logging.info("[%s] step %d  %s", prefix, step,
                         console_line(values, CONSOLE.get(prefix, sorted(values))))

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """``image`` ``[H, W, C]`` uint8."""
        if self._writer is not None:
            self._writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def console_line(values: Mapping[str, float], fields: Sequence[str]) -> str:
    """``"a=1.23  b=4.5"`` for the ``fields`` of ``values`` that are present, in order."""
    return "  ".join(f"{k}={_fmt(values[k])}" for k in fields if k in values)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
