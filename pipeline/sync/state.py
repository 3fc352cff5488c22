"""Incremental sync state in `$ADPIPE_HOME/last_synced_ids.json`, written atomically.

The state names the last committed run, the source WAL position it read as of, and, per fact table,
the high-water id, the anchor row (to detect a source that was reset) and the id ranges still missing
below the high-water mark; per source table, the rows in quarantine as of that run; and the replication slot
that holds the fact changes made since.

`format` versions the file: a file of a newer format than this adpipe knows is refused, not misread.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.atomic import write_json_atomic
from pipeline.errors import AdpipeError

STATE_FILE = "last_synced_ids.json"
STATE_FORMAT = 2
"""0 (no `format` key): written before the key existed, without quarantine counts. 1: without `capture_slot`
(an older adpipe would not advance the slot, nor apply what it holds, so it must refuse format 2)."""


@dataclass
class Gap:
    """Ids [lo, hi] absent below the high-water mark when a run read the table.

    `xid_bound` is that run's `Snapshot.xid_bound`, taken after its snapshot: above the transaction id of
    every transaction that could still commit these ids, as each drew its id, and was assigned its
    transaction id, before that snapshot could show a larger id (docs/design.md, Assumptions). Once a later
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
    quarantined: dict[str, int] | None = None
    """Source table → rows in quarantine once the last run was committed; None in a state of format 0."""
    capture_slot: str | None = None
    """The replication slot holding every fact change since this state (pipeline.sync.capture); None: capture off."""

    def to_json(self) -> dict:
        return {"format": STATE_FORMAT, **asdict(self)}

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
        return cls(
            data.get("last_run_id"),
            data.get("dimension_version", 0),
            facts,
            data.get("source_lsn"),
            data.get("quarantined"),
            data.get("capture_slot"),
        )


def load_state(home: Path) -> SyncState:
    """The committed state; an empty one before the first sync."""
    path = home / STATE_FILE
    if not path.exists():
        return SyncState()
    try:
        data = json.loads(path.read_text())
        newer = data.get("format", 0) > STATE_FORMAT
        state = None if newer else SyncState.from_json(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AdpipeError(f"{path} is corrupt ({exc}); run `adpipe sync --mode full` to rebuild it") from None
    if state is None:
        raise AdpipeError(
            f"{path} has state format {data['format']}, newer than this adpipe's {STATE_FORMAT}: upgrade adpipe"
        )
    return state


def committed_at(home: Path) -> datetime:
    """When the state file was last committed (its modification time): the end of the run it names."""
    return datetime.fromtimestamp((home / STATE_FILE).stat().st_mtime, UTC)


def save_state(home: Path, state: SyncState) -> None:
    """Replace the state file atomically: readers see the old state or the new one, never a mix."""
    write_json_atomic(home / STATE_FILE, state.to_json())
