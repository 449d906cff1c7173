"""SIGTERM handling: a flag the training loop checks between dispatches.

The handler only sets the flag (nothing else is safe inside a signal handler); the loop
then saves a checkpoint synchronously and exits with status 0, so schedulers that
pre-empt with SIGTERM (Borg, SLURM, Kubernetes, spot VMs) lose no work.
"""
from __future__ import annotations

import signal
import threading


class PreemptionFlag:
    """Installs a SIGTERM handler (main thread only) that sets :attr:`requested`."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def restore(self) -> None:
        """Reinstates the previous handler."""
        signal.signal(signal.SIGTERM, self._previous)
