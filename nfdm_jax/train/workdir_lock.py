"""One training run per workdir: an exclusive ``flock`` on ``workdir/train.lock``.

The kernel releases a ``flock`` when its holder exits, however it exits (``kill -9``
included), so a lock left by a dead run is free at once: nothing waits on a stale lock
and no pid has to be checked. The file itself stays (deleting it would race with the next
run taking it); its text names the last holder, for the message a second run prints. On
several processes, process 0 takes the lock for the job. Remote workdirs (``gs://``)
cannot be locked and are not.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from typing import Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

LOCK_FILE = "train.lock"


class WorkdirBusy(RuntimeError):
    """Another training run holds the workdir."""


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds ``workdir``'s lock for the ``with`` block; raises :class:`WorkdirBusy` (on
    every process) if another run holds it."""
    fd, holder = None, ""
    if jax.process_index() == 0 and "://" not in workdir:
        fd, holder = _acquire(workdir)
    busy = bool(holder)
    if jax.process_count() > 1:  # every process stops if process 0 could not lock
        busy = bool(multihost_utils.broadcast_one_to_all(np.int32(busy)))
    if busy:
        raise WorkdirBusy(f"--workdir={workdir} is in use by {holder or 'another training run'}"
                          f" (it holds {os.path.join(workdir, LOCK_FILE)}): wait for it to "
                          f"finish, stop it, or use another --workdir")
    try:
        yield
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _acquire(workdir: str) -> tuple[Optional[int], str]:
    """``(file descriptor, "")`` holding the lock, or ``(None, holder)`` if it is taken."""
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip()
        os.close(fd)
        return None, holder or "another training run"
    os.ftruncate(fd, 0)
    os.write(fd, f"training run pid {os.getpid()} on host {socket.gethostname()}\n".encode())
    return fd, ""
