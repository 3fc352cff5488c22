"""The plan step: the mode a run really runs in, decided in the source snapshot before the run is named.

An incremental run is refused, or becomes full, when the source was reset since the last run: ids restarted,
a fact table truncated (seen by change capture), or, with change capture off, facts synced earlier gone from the
source; or when the warehouse lacks the last committed run (emptied, replaced, restored from an older backup). A
replica that has not replayed what the last run read is refused.
"""

from __future__ import annotations

import logging

from clickhouse_connect.driver.client import Client

from pipeline.catalog import FACTS
from pipeline.config import mask_url
from pipeline.errors import SyncRefusedError
from pipeline.options import Mode, OnReset
from pipeline.source.capture import lsn_value
from pipeline.sync.capture import Changes
from pipeline.sync.extract import SourceReader
from pipeline.sync.runlog import holds_run
from pipeline.sync.state import SyncState
from pipeline.warehouse.quarantine import accounted_rows

log = logging.getLogger(__name__)


def plan_mode(
    reader: SourceReader,
    client: Client,
    state: SyncState,
    mode: Mode,
    on_reset: OnReset,
    changes: Changes | None,
    repair: bool = False,
) -> Mode:
    """The mode this run runs in: an incremental run becomes full, or is refused, when the source was reset.

    `changes` is what change capture saw; None when it is off, and then facts are counted instead (unless this is a
    repair run, which compares them all).
    """
    if mode is Mode.FULL:
        return mode
    if reader.replica:
        _refuse_replica_behind(reader, state)
    if state.last_run_id is not None and not holds_run(client, state.last_run_id):
        # Emptied, replaced (a new server, a lost volume) or restored from an older backup: an incremental run would
        # add the rows since the last sync to a warehouse that lacks what came before them, and pass.
        replaced = f"the warehouse has no record of run {state.last_run_id}, the last this home committed"
        return _stop_or_full(
            on_reset,
            f"{replaced}: it was emptied, replaced or restored from an earlier backup; run `adpipe replay` to load"
            " the staged runs into it, then sync, or `adpipe sync --mode full`",
            replaced,
        )
    if changes is not None:
        # The slot reports deletes and updates, also of the row at the high-water mark, so only a truncation is a
        # reset; a replaced source database has no slot, which the capture check refused already.
        reason = f"{', '.join(sorted(changes.truncated))} truncated" if changes.truncated else None
    elif repair:
        # A repair compares every synced id with the warehouse, which is right whatever happened to the ids: the
        # newest facts deleted look like ids restarted (the max id falls below the last synced one), and are not.
        reason = None
    else:
        reason = reset_reason(reader, state)
        if reason is None and (vanished := vanished_reason(reader, client, state)):
            return _stop_or_full(
                on_reset,
                f"{vanished}: run `adpipe sync --repair` to find and remove them, or `adpipe sync --mode full`",
                vanished,
            )
    if reason:
        return _stop_or_full(
            on_reset,
            f"the source was reset ({reason}); run `adpipe sync --mode full`, or pass --on-reset full to do so"
            " automatically",
            f"the source was reset ({reason})",
        )
    return mode


def _stop_or_full(on_reset: OnReset, refusal: str, reason: str) -> Mode:
    """Refuse the run with `refusal`, or with --on-reset full run it full, logging `reason`."""
    if on_reset is OnReset.STOP:
        raise SyncRefusedError(refusal)
    log.warning("%s: running a full sync", reason)
    return Mode.FULL


def reset_reason(reader: SourceReader, state: SyncState) -> str | None:
    """Why the source looks reset since the last run (ids restarted, tables emptied), or None."""
    for table in FACTS:
        previous = state.facts.get(table)
        if previous is None or previous.high_water == 0:
            continue
        current_max = reader.max_id(table)
        if current_max < previous.high_water:
            return f"{table} max id {current_max} is below the last synced id {previous.high_water}"
        anchor = reader.anchor_of(table, previous.high_water)
        if anchor is not None and previous.anchor_created_at and anchor != previous.anchor_created_at:
            return f"{table} row {previous.high_water} is not the row synced last time"
    return None


def vanished_reason(reader: SourceReader, client: Client, state: SyncState) -> str | None:
    """Without change capture: whether facts the warehouse holds (or quarantined) left the source, per table.

    Below the last synced id, the source must hold exactly what the warehouse accounts for, outside the ranges
    still missing (gaps, where late rows may yet appear). Fewer rows in the source means rows were deleted. Two
    counts per table: an index-only scan in Postgres, and the id column in ClickHouse.
    """
    for table in FACTS:
        previous = state.facts.get(table)
        if previous is None or previous.high_water == 0:
            continue
        in_source = reader.count_ids(table, previous.high_water, [(gap.lo, gap.hi) for gap in previous.gaps])
        held = accounted_rows(client, table, previous.high_water)
        if in_source < held:
            return (
                f"{held - in_source:,} {table} rows synced earlier are no longer in the source, and change capture"
                " is off to say which"
            )
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
        " run `adpipe sync --mode full`)",
        transient=True,
    )
