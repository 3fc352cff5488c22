"""Incremental sync state in `$ADPIPE_HOME/last_synced_ids.json`, written atomically.

The state names the last committed run, the source WAL position it read as of, and, per fact table,
the high-water id, the anchor row (to detect a source that was reset) and the id ranges still missing
below the high-water mark.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import AdpipeError

STATE_FILE = "last_synced_ids.json"


@dataclass
class Gap:
    """Ids [lo, hi] absent below the high-water mark when a run read the table.

    `xid_bound` is that run's `Snapshot.xid_bound`, taken after its snapshot: above the transaction id of
    every transaction that could still commit these ids, as each drew its id, and was assigned its
    transaction id, before that snapshot could show a larger id (README, Assumptions). Once a later
    snapshot's xmin is at or above `xid_bound`, all those transactions have ended and whatever they
    committed is visible to it: ids still absent then never will appear. None for a gap from a state
    file written before the bound existed (it recorded the snapshot's xmax, which bounds nothing about
    running transactions): the next run re-checks it and gives it its own bound.
    """

    lo: int
    hi: int
    xid_bound: int | None


@dataclass
class FactState:
    high_water: int = 0
    anchor_created_at: str | None = None
    """created_at of the row at `high_water`, as ISO text: a different value there means a reset source."""
    gaps: list[Gap] = field(default_factory=list)


@dataclass
class SyncState:
    last_run_id: str | None = None
    dimension_version: int = 0
    facts: dict[str, FactState] = field(default_factory=dict)
    source_lsn: str | None = None
    """The source WAL position the last run read as of: a replica replayed less than this is behind that run."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SyncState:
        facts = {
            name: FactState(
                high_water=fact["high_water"],
                anchor_created_at=fact.get("anchor_created_at"),
                gaps=[Gap(gap["lo"], gap["hi"], gap.get("xid_bound")) for gap in fact.get("gaps", [])],
            )
            for name, fact in data.get("facts", {}).items()
        }
        return cls(data.get("last_run_id"), data.get("dimension_version", 0), facts, data.get("source_lsn"))


def load_state(home: Path) -> SyncState:
    """The committed state; an empty one before the first sync."""
    path = home / STATE_FILE
    if not path.exists():
        return SyncState()
    try:
        return SyncState.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise AdpipeError(f"{path} is corrupt ({exc}); run `adpipe sync --mode full` to rebuild it") from None


def save_state(home: Path, state: SyncState) -> None:
    """Replace the state file atomically: readers see the old state or the new one, never a mix."""
    write_json_atomic(home / STATE_FILE, state.to_json())


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
