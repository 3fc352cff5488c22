"""Inter-process locks on files, so two adpipe processes never fight over one resource."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import BusyError

_POLL_SECONDS = 0.05


def acquire_lock(path: Path, what: str, *, wait_seconds: float = 0.0) -> int:
    """Take an exclusive lock on `path` and return its descriptor; fail if another process still has it after
    `wait_seconds` (at once by default).

    The lock dies with its process (flock), so a crash never leaves a stale lock behind.
    The holder's pid is written into the file only to name it in the error message.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_seconds
    while not _try_flock(fd, fcntl.LOCK_EX):
        if time.monotonic() >= deadline:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            waited = f" after waiting {wait_seconds:g} s" if wait_seconds else ""
            raise BusyError(
                f"{what} is busy: another adpipe process (pid {holder}) holds {path}{waited}",
                path=str(path),
                holder=holder,
            )
        time.sleep(_POLL_SECONDS)
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


@contextmanager
def shared_lock(path: Path) -> Iterator[None]:
    """A shared lock on `path` for the duration of a block, waiting for it: many holders at once, so a process can
    say "I am waiting" (see `is_locked`) without keeping the others out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """Whether any open file holds a lock on `path`, this process's own other descriptors included."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return not _try_flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)  # closing also drops the lock just taken, if it was free


def _try_flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
