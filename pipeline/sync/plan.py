"""The plan step: the mode a run really runs in, decided in the source snapshot before the run is named.

An incremental run is refused, or becomes full, when the source was reset since the last run; a replica
that has not replayed what the last run read is refused.
"""

from __future__ import annotations

import logging

from pipeline.catalog import FACTS
from pipeline.config import mask_url
from pipeline.errors import SyncRefusedError
from pipeline.options import Mode, OnReset
from pipeline.sync.extract import SourceReader, lsn_value
from pipeline.sync.state import SyncState

log = logging.getLogger(__name__)


def plan_mode(reader: SourceReader, state: SyncState, mode: Mode, on_reset: OnReset) -> Mode:
    """The mode this run runs in: an incremental run becomes full, or is refused, when the source was reset."""
    if mode is Mode.FULL:
        return mode
    if reader.replica:
        _refuse_replica_behind(reader, state)
    if reason := reset_reason(reader, state):
        if on_reset is OnReset.STOP:
            raise SyncRefusedError(
                f"the source was reset ({reason}); run `adpipe sync --mode full`, "
                "or pass --on-reset full to do so automatically"
            )
        log.warning("the source was reset (%s): running a full sync", reason)
        return Mode.FULL
    return mode


def reset_reason(reader: SourceReader, state: SyncState) -> str | None:
    """Why the source looks reset since the last run (ids restarted, tables emptied), or None."""
    for table in FACTS:
        previous = state.facts.get(table)
        if previous is None or previous.high_water == 0:
            continue
        current_max = reader.max_id(table)
        if current_max < previous.high_water:
            return f"{table} max id {current_max} is below the last synced id {previous.high_water}"
        anchor = reader.created_at_of(table, previous.high_water)
        if anchor is not None and previous.anchor_created_at and anchor.isoformat() != previous.anchor_created_at:
            return f"{table} row {previous.high_water} is not the row synced last time"
    return None


def _refuse_replica_behind(reader: SourceReader, state: SyncState) -> None:
    """Stop before reading a replica that has not yet replayed what the last run read (from the primary, say).

    Its older state would pass for a reset source (max id below the high-water mark) and would send
    dimension rows back to earlier versions.
    """
    if state.source_lsn is None or lsn_value(reader.snapshot.lsn) >= lsn_value(state.source_lsn):
        return
    raise SyncRefusedError(
        f"the Postgres replica at {mask_url(reader.url)} has replayed the source only up to WAL"
        f" {reader.snapshot.lsn}, behind the last sync, which read it as of {state.source_lsn}:"
        " wait for the replica to catch up and run the sync again"
        " (or unset ADPIPE_POSTGRES_REPLICA_URL to read the primary; after replacing the source database,"
        " run `adpipe sync --mode full`)"
    )
