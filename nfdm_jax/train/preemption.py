"""Pre-emption: agree on one step at which every process saves and stops.

One process: a SIGTERM handler sets a flag (nothing else is safe inside a signal
handler) that the loop checks between dispatches. Several processes: JAX's pre-emption
service (started by ``jax.distributed.initialize``) catches SIGTERM on any host, tells the
others through the coordination service, and
:func:`jax.experimental.multihost_utils.reached_preemption_sync_point` (wrapped by Orbax's
``CheckpointManager.reached_preemption``) then returns ``True`` on every host at the same
call, so they all save the same step. The loop then saves synchronously and exits with
status 0, so schedulers that pre-empt with SIGTERM (Borg, SLURM, Kubernetes, spot VMs)
lose no work.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preemption:
    """Tells the loop when to save and stop.

    Args:
      reached_sync_point: Orbax's ``CheckpointManager.reached_preemption`` (or JAX's
        ``reached_preemption_sync_point``): ``dispatch index -> bool``.
    """

    def __init__(self, reached_sync_point: Callable[[int], bool]):
        self._reached = reached_sync_point
        # jax.distributed.initialize starts the service unless this option turns it off.
        self._service = (jax.process_count() > 1 and jax.distributed.is_initialized()
                         and jax.config.jax_enable_preemption_service)
        self._event = threading.Event()
        self._previous = None
        if not self._service:
            # With the service, JAX's own handler receives SIGTERM: do not replace it.
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self._event.set()

    def should_stop(self, dispatch: int, synced: bool) -> bool:
        """Whether to save and stop after dispatch number ``dispatch`` (0, 1, 2, ... from
        this process's start; every process must call this after every dispatch).

        ``synced``: the loop synchronises the hosts at this dispatch anyway (log or
        checkpoint step); used only when several processes run without the service.
        """
        if self._service:
            return self._reached(dispatch)
        if jax.process_count() == 1:
            return self._event.is_set()
        if not synced:  # No service: agree by a collective at steps that sync anyway.
            return False
        flags = multihost_utils.process_allgather(np.int32(self._event.is_set()))
        return bool(np.max(flags))

    def restore(self) -> None:
        """Reinstates the previous SIGTERM handler."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
