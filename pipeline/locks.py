"""Inter-process locks on files, so two adpipe processes never fight over one resource."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import BusyError


def acquire_lock(path: Path, what: str) -> int:
    """Take an exclusive lock on `path` and return its descriptor; fail at once if another process has it.

    The lock dies with its process (flock), so a crash never leaves a stale lock behind.
    The holder's pid is written into the file only to name it in the error message.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BusyError(
            f"{what} is busy: another adpipe process (pid {holder}) holds {path}", path=str(path), holder=holder
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """`acquire_lock` for the duration of a block."""
    fd = acquire_lock(path, what)
    try:
        yield
    finally:
        os.close(fd)
