"""A reader's private copy of one checkpoint folder, so that the writer may delete it meanwhile.

Hard links (a copy across file systems) pin the files' contents: the training run's
retention can delete the step folder while a reader restores from the copy. A listing of
the folder (paths, inodes, sizes) taken before and after linking shows that the copy is
whole; otherwise :class:`Vanished` tells the reader to list the steps again.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from typing import Iterator

# os.link failures that mean "no hard links here", not "the file is gone".
_NO_LINKS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP)


class Vanished(Exception):
    """A step folder changed or disappeared while it was being copied."""


@contextlib.contextmanager
def linked(directory: str, step: int, workdir: str) -> Iterator[str]:
    """A private workdir (under ``workdir``, removed on exit) holding
    ``checkpoints/<step>`` linked from ``directory``; raises :class:`Vanished`."""
    source = os.path.join(directory, str(step))
    before = listing(source)
    root = tempfile.mkdtemp(prefix=".reading-", dir=workdir)
    try:
        for rel in before:
            dest = os.path.join(root, "checkpoints", str(step), rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            _link_or_copy(os.path.join(source, rel), dest)
        if listing(source) != before:
            raise Vanished(source)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def listing(folder: str) -> dict[str, tuple[int, int]]:
    """``{relative file path: (inode, size)}`` of every file under ``folder``."""
    out = {}
    try:
        if not os.path.isdir(folder):
            raise FileNotFoundError(folder)
        for d, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(d, name)
                st = os.stat(path)
                out[os.path.relpath(path, folder)] = (st.st_ino, st.st_size)
    except FileNotFoundError as e:
        raise Vanished(folder) from e
    return out


def _link_or_copy(source: str, dest: str) -> None:
    try:
        try:
            os.link(source, dest)
        except OSError as e:
            if e.errno not in _NO_LINKS:
                raise
            shutil.copyfile(source, dest)
    except FileNotFoundError as e:
        raise Vanished(source) from e
