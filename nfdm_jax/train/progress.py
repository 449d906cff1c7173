"""Progress people can read: a periodic ``[what] i/N  rate  ETA`` line on long work, a
"compiling … (≈ N s)" line before slow compiles, and the one-line summary that ends a run.

Lines go to absl's log (stderr) from process 0, like the metrics. A :class:`Progress`
prints at most every ``every_secs`` seconds and once at the end, in the spirit of clu's
``ReportProgress`` but without its dependency.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

import jax
from absl import logging


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def info(message: str, *args) -> None:
    """Logs from process 0 only (each process would otherwise repeat it)."""
    if jax.process_index() == 0:
        logging.info(message, *args)


class Progress:
    """Counts ``done`` out of ``total`` units of work and logs rate and ETA.

    Args:
      what: the label, e.g. ``"train"`` or ``"eval"``.
      total: units of work in all (steps, batches).
      start: units already done before this object (a resumed run).
      unit: the unit's name for the rate, e.g. ``"steps"``.
      every_secs: least time between two lines.
    """

    def __init__(self, what: str, total: int, start: int = 0, unit: str = "steps",
                 every_secs: float = 30.0):
        self.what, self.total, self.start, self.unit = what, total, start, unit
        self.every_secs = every_secs
        self.t0 = self._last = time.perf_counter()
        self.done = start

    def rate(self) -> float:
        """Units per second since this object was created."""
        elapsed = time.perf_counter() - self.t0
        return (self.done - self.start) / elapsed if elapsed > 0 else float("nan")

    def line(self) -> str:
        """``"[what] done/total (p%)  r unit/s  elapsed m:ss  ETA m:ss"``."""
        rate = self.rate()
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = _duration(left) if left == left else "?"
        pct = 100.0 * self.done / max(self.total, 1)
        return (f"[{self.what}] {self.done}/{self.total} ({pct:.0f}%)  {rate:.3g} {self.unit}/s  "
                f"elapsed {_duration(time.perf_counter() - self.t0)}  ETA {eta}")

    def update(self, done: int, force: bool = False) -> None:
        """Sets the count; logs a line if ``every_secs`` passed, at the end, or if ``force``."""
        self.done = done
        now = time.perf_counter()
        if force or done >= self.total or now - self._last >= self.every_secs:
            self._last = now
            info("%s", self.line())


class CompileTimer:
    """Says "compiling <what> (≈ N s)…" before a compile and records how long it took in
    ``workdir/compile_times.json``, whose value is the estimate the next run prints."""

    def __init__(self, workdir: Optional[str], what: str):
        self.path = os.path.join(workdir, "compile_times.json") if workdir else None
        self.what = what

    def _load(self) -> dict[str, float]:
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    return json.load(f)
            except (OSError, ValueError):
                return {}
        return {}

    def __enter__(self) -> "CompileTimer":
        last = self._load().get(self.what)
        estimate = (f"≈ {last:.0f} s, as last time" if last is not None
                    else "the first compile on a CPU can take a few minutes")
        info("compiling %s (%s)…", self.what, estimate)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            return
        seconds = time.perf_counter() - self.t0
        info("compiled %s in %.1f s", self.what, seconds)
        if self.path and jax.process_index() == 0:
            times = self._load() | {self.what: seconds}
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "w") as f:
                json.dump(times, f, indent=2)


# The metrics a summary line shows (with their "eval_" versions), when present.
HEADLINE = ("loss", "bpd", "total", "classifier_test_accuracy", "fd_floor")


def summary(what: str, steps: Optional[int], seconds: float, metrics: dict[str, float],
            outputs: dict[str, str], rate: Optional[float] = None) -> str:
    """The last line of a run: steps, wall time, headline metrics (mean±stderr where there
    is one; see :data:`HEADLINE`) and where the outputs are."""
    keys = [k for name in HEADLINE for k in (name, "eval_" + name) if k in metrics]
    keys += sorted((k for k in metrics if k.startswith(("fd_nfe", "fid_nfe"))
                    and not k.endswith("_stderr")), key=lambda k: int(k.rsplit("nfe", 1)[1]))
    shown = "  ".join(
        f"{k}={metrics[k]:.4g}"
        + (f"±{metrics[k + '_stderr']:.2g}" if k + "_stderr" in metrics else "") for k in keys)
    speed = f" ({rate:.3g} steps/s)" if rate is not None and rate == rate else ""
    where = "  ".join(f"{k}: {v}" for k, v in outputs.items())
    counted = f"{steps} steps{speed}, " if steps is not None else ""
    return (f"[done] {what}: {counted}wall {_duration(seconds)}"
            + (f"; {shown}" if shown else "") + (f"; {where}" if where else ""))
