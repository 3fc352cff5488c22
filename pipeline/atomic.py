"""Atomic file writes: a reader sees a file's old content or all of the new, never a torn file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import AdpipeError


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that `path` holds either its old content or all of the new, never a torn file."""

    def write(tmp: Path) -> None:
        with tmp.open("w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")

    write_atomic(path, write)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write` on a temp file in `path`'s directory, fsync it, then rename it over `path`.

    A path that cannot be written (a directory, a read-only or missing place) is an AdpipeError naming it.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise AdpipeError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        # mkstemp creates the file private (0600); the result gets the mode any other tool would give it.
        os.chmod(tmp, 0o666 & ~_current_umask())
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AdpipeError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    """The process umask, as Linux shows it in /proc: other threads write files too (staging parts, chDB), and
    reading it the portable way means setting it for an instant, which would give their files mode 0600."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)  # elsewhere: set it and set it straight back
    os.umask(mask)
    return mask
