"""The sync: Postgres → Polars → staged Parquet run → ClickHouse → committed state.

A run is a load package (see `stage`): it is staged completely, published, loaded with
deduplicated inserts, and only then committed to the state file. A run that was published but
not committed (a crash between load and commit) is loaded again by the next sync before it does
anything else; its parts carry the same deduplication tokens, so nothing is counted twice.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import PurePath
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from pipeline.catalog import DIMENSIONS, FACTS, LOAD_ORDER
from pipeline.config import Settings, mask_url
from pipeline.errors import AdpipeError, SyncRefusedError
from pipeline.locks import exclusive_lock
from pipeline.options import DEFAULT_CHUNK_ROWS, Engine, Mode, OnReset
from pipeline.prefetch import prefetch
from pipeline.storage import open_store
from pipeline.sync.changes import dimension_changes, full_load_rows
from pipeline.sync.clean import Cleaned, clean_advertisers, clean_campaigns, clean_facts, quarantine_arrow
from pipeline.sync.extract import Snapshot, SourceReader, lsn_value
from pipeline.sync.load import create_shadow, load_part, swap_in
from pipeline.sync.stage import Run, RunWriter, list_runs, new_run_id, remove_interrupted, state_runs
from pipeline.sync.state import FactState, Gap, SyncState, load_state, save_state
from pipeline.warehouse import client as clickhouse
from pipeline.warehouse.schema import apply_schema

log = logging.getLogger(__name__)

FULL_DIMENSION_VERSION = 1

Progress = Callable[[str, int, int], None]
"""Called with (what, done, total) as work advances."""


@dataclass
class TableSummary:
    extracted: int = 0
    loaded: int = 0
    quarantined: int = 0
    min_id: int | None = None
    max_id: int | None = None


@dataclass
class SyncResult:
    run_id: str
    mode: str
    tables: dict[str, TableSummary] = field(default_factory=dict)
    recovered: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "recovered_runs": self.recovered,
            "interrupted_runs": self.interrupted,
            "tables": {name: t.__dict__ for name, t in self.tables.items()},
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


@dataclass
class SyncOptions:
    mode: Mode = Mode.INCREMENTAL
    engine: Engine = Engine.ADBC
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    partitions: int = 2
    on_reset: OnReset = OnReset.STOP
    progress: Progress | None = None


def sync(settings: Settings, options: SyncOptions) -> SyncResult:
    """Run one sync. Only one runs at a time per ADPIPE_HOME; a second one fails at once."""
    if options.chunk_rows < 1:
        raise AdpipeError(f"--chunk-rows must be 1 or more, got {options.chunk_rows}")
    with exclusive_lock(settings.home / "sync.lock", "sync"):
        open_store(settings.staging_dir)  # an unreachable S3 staging fails here, before the warehouse is touched
        client = clickhouse.connect(settings)
        apply_schema(client)
        recovered = recover_pending_runs(client, settings)
        interrupted = close_interrupted_runs(client, set(recovered))
        state = load_state(settings.home)
        mode = options.mode
        if mode is Mode.INCREMENTAL and state.last_run_id is None:
            log.warning("no previous sync: running a full sync")
            mode = Mode.FULL
        result = _run(client, settings, options, mode, state)
        result.recovered, result.interrupted = recovered, interrupted
        return result


def recover_pending_runs(client: Client, settings: Settings) -> list[str]:
    """Load and commit runs that were published but not committed (the previous sync died mid-load)."""
    remove_interrupted(settings.staging_dir)
    last = load_state(settings.home).last_run_id
    pending = [run for run in list_runs(settings.staging_dir) if last is None or run.run_id > last]
    for run in pending:
        log.warning("loading run %s, staged but not committed by an earlier sync", run.run_id)
        load_run(client, run)
        commit(settings, run)
        _record_recovered(client, run)
    return [run.run_id for run in pending]


INTERRUPTED = "the sync process ended before recording how the run ended (killed, or the machine stopped)"


def close_interrupted_runs(client: Client, recovered: set[str]) -> list[str]:
    """Mark the runs whose sync_runs rows still say `running` as `interrupted`; returns their ids.

    Called under the sync lock, after recovery: no other sync of this ADPIPE_HOME runs, so such a run was
    killed before it could record its end, and nothing of it was committed (what it had published was just
    recovered and recorded as such). One ADPIPE_HOME per warehouse is assumed, as for the incremental state.
    """
    rows = client.query(
        "SELECT run_id, any(mode), min(started_at) FROM sync_runs FINAL WHERE status = 'running' GROUP BY run_id"
    ).result_rows
    interrupted = sorted(run_id for run_id, _, _ in rows if run_id not in recovered)
    for run_id, mode, started in rows:
        if run_id in interrupted:
            _record(client, SyncResult(run_id, mode), started.replace(tzinfo=UTC), "interrupted", error=INTERRUPTED)
    return interrupted


def _record_recovered(client: Client, run: Run) -> None:
    """Record a run that this sync loaded and committed for the sync that staged it: status `recovered`."""
    summary = run.manifest.get("summary")
    if summary is None:  # staged by a version whose manifests lacked the summary: what was loaded, at least
        tables = {
            name: TableSummary(loaded=t["rows"], min_id=t["min_id"], max_id=t["max_id"])
            for name, t in run.manifest["tables"].items()
            if name in (*DIMENSIONS, *FACTS)
        }
    else:
        tables = {name: TableSummary(**counts) for name, counts in summary.items()}
    started = datetime.fromisoformat(run.manifest["source"]["taken_at"]).replace(tzinfo=UTC)
    _record(client, SyncResult(run.run_id, run.mode, tables), started, "recovered")


def replay(settings: Settings, progress: Progress | None = None) -> list[str]:
    """Rebuild the warehouse from the staged runs alone (no Postgres): the latest full run, then the rest."""
    with exclusive_lock(settings.home / "sync.lock", "sync"):
        runs = list_runs(settings.staging_dir)
        chosen = state_runs(runs, runs[-1].run_id if runs else None)
        if not chosen:
            raise AdpipeError(f"nothing to replay: no full run staged in {settings.staging_dir}")
        client = clickhouse.connect(settings)
        apply_schema(client)
        for done, run in enumerate(chosen, start=1):
            load_run(client, run)
            commit(settings, run)
            if progress:
                progress("replay", done, len(chosen))
        return [run.run_id for run in chosen]


def load_run(client: Client, run: Run) -> None:
    """Load a published run: a full run through a shadow database swap, an incremental one in place."""
    shadow = create_shadow(client) if run.mode == Mode.FULL else None
    load_parts(client, run, database=shadow)
    if shadow is not None:
        swap_in(client, shadow)


def load_parts(client: Client, run: Run, database: str | None = None) -> None:
    """Insert every part of a published run, in LOAD_ORDER, into `database` (default: the client's)."""
    for table in LOAD_ORDER:
        columns = list(run.manifest["tables"].get(table, {}).get("schema", {}))
        for part in run.parts(table):
            load_part(client, table, run.store, run.directory / part.path, part.sha256, columns, database=database)


def commit(settings: Settings, run: Run) -> None:
    """Make the run's resulting state the committed one (atomic rename)."""
    save_state(settings.home, SyncState.from_json(run.manifest["state_after"]))


def _run(client: Client, settings: Settings, options: SyncOptions, mode: Mode, state: SyncState) -> SyncResult:
    """Plan the run in the source snapshot, then name and record it with the mode it will really run in."""
    started = datetime.now(UTC)
    try:
        with ExitStack() as stack:
            reader = stack.enter_context(SourceReader(settings, options.engine, options.partitions))
            planned_mode = _plan(reader, state, mode, options.on_reset)
            reader_open = stack.pop_all()  # from here on, _stage_and_load closes the reader
    except BaseException as exc:
        # A refused run is on record too, under the mode it was asked for (`sync_runs`, docs: Watching the sync).
        _record(client, SyncResult(new_run_id(mode), mode), started, "failed", error=str(exc) or type(exc).__name__)
        raise
    mode = planned_mode
    run_id = new_run_id(mode)
    result = SyncResult(run_id, mode)
    _record(client, result, started, "running")
    try:
        run = _stage_and_load(client, settings, options, reader, reader_open, state, result)
        commit(settings, run)
    except BaseException as exc:
        _record(client, result, started, "failed", error=str(exc) or type(exc).__name__)
        raise
    _record(client, result, started, "success")
    return result


def _plan(reader: SourceReader, state: SyncState, mode: Mode, on_reset: OnReset) -> Mode:
    """The mode this run runs in: an incremental run becomes full, or is refused, when the source was reset."""
    if mode is Mode.FULL:
        return mode
    if reader.replica:
        _refuse_replica_behind(reader, state)
    if reason := _reset_reason(reader, state):
        if on_reset is OnReset.STOP:
            raise SyncRefusedError(
                f"the source was reset ({reason}); run `adpipe sync --mode full`, "
                "or pass --on-reset full to do so automatically"
            )
        log.warning("the source was reset (%s): running a full sync", reason)
        return Mode.FULL
    return mode


class _Pipeline:
    """Writes parts of one run and, for a full run, loads each into the shadow database as soon as it is written.

    Loading overlaps with extracting the next chunk (the drivers release the GIL). At most two
    loads wait at a time, so memory stays bounded by the chunk size.
    """

    def __init__(self, client: Client, writer: RunWriter, shadow: str | None) -> None:
        self.client = client
        self.writer = writer
        self.shadow = shadow
        self.pool = ThreadPoolExecutor(max_workers=1) if shadow else None
        self.pending: list[Future[None]] = []
        self.timings: dict[str, float] = defaultdict(float)

    def write(self, table: str, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        began = time.perf_counter()
        path = self.writer.write_part(table, data)
        self.timings["stage_write"] += time.perf_counter() - began
        if self.pool is not None:
            entry = self.writer.tables[table]
            while len(self.pending) >= 2:
                self.pending.pop(0).result()
            self.pending.append(self.pool.submit(self._load, table, path, entry.parts[-1].sha256, list(entry.schema)))

    def _load(self, table: str, path: PurePath, sha: str, columns: list[str]) -> None:
        began = time.perf_counter()
        load_part(self.client, table, self.writer.store, path, sha, columns, database=self.shadow)
        self.timings["load_overlapped"] += time.perf_counter() - began

    def finish(self) -> None:
        for future in self.pending:
            future.result()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown()


def _stage_and_load(
    client: Client,
    settings: Settings,
    options: SyncOptions,
    reader: SourceReader,
    reader_open: ExitStack,
    state: SyncState,
    result: SyncResult,
) -> Run:
    """Extract, clean and stage the run from the planned reader (closed with `reader_open`), publish it, load it."""
    began = time.perf_counter()
    mode = Mode(result.mode)
    writer = RunWriter(settings.staging_dir, result.run_id)
    pipeline: _Pipeline | None = None
    try:
        with reader_open:
            shadow = create_shadow(client) if mode is Mode.FULL else None
            pipeline = _Pipeline(client, writer, shadow)
            state_after = _extract_all(client, reader, pipeline, options, mode, state, result)
        pipeline.finish()
        extract_seconds = time.perf_counter() - began
        run = writer.publish(
            {
                "mode": mode.value,
                "source": {
                    "snapshot": reader.snapshot.text,
                    "xid_bound": reader.snapshot.xid_bound,
                    "taken_at": reader.snapshot.taken_at.isoformat(),
                    "lsn": reader.snapshot.lsn,
                    "read_from": "replica" if reader.replica else "primary",
                },
                "engine": options.engine.value,
                "chunk_rows": options.chunk_rows,
                "summary": {name: t.__dict__ for name, t in result.tables.items()},
                "versions": _versions(),
                "state_after": state_after.to_json(),
            }
        )
    except BaseException:
        if pipeline is not None:
            pipeline.finish()
        writer.discard()
        raise
    load_began = time.perf_counter()
    if mode is Mode.FULL:
        swap_in(client, shadow)
    else:
        load_run(client, run)
    result.timings = {
        **pipeline.timings,
        "extract_clean_stage": extract_seconds,
        "load_after_stage": time.perf_counter() - load_began,
        "total": time.perf_counter() - began,
    }
    return run


def _extract_all(
    client: Client,
    reader: SourceReader,
    pipeline: _Pipeline,
    options: SyncOptions,
    mode: Mode,
    state: SyncState,
    result: SyncResult,
) -> SyncState:
    full = mode is Mode.FULL
    version = FULL_DIMENSION_VERSION if full else state.dimension_version + 1
    quarantine: list[pl.DataFrame] = []
    resolved: list[pl.DataFrame] = []
    dimensions_changed = _sync_dimensions(client, reader, pipeline, full, version, quarantine, resolved, result)
    facts = {}
    for table in FACTS:
        previous = FactState() if full else state.facts.get(table, FactState())
        facts[table] = _sync_fact(reader, pipeline, options, table, previous, quarantine, result)
    pipeline.write("quarantine", quarantine_arrow(quarantine, version))
    pipeline.write("quarantine", quarantine_arrow(resolved, version, resolved=True))
    dimension_version = version if full or dimensions_changed else state.dimension_version
    return SyncState(result.run_id, dimension_version, facts, source_lsn=reader.snapshot.lsn)


def _sync_dimensions(
    client: Client,
    reader: SourceReader,
    pipeline: _Pipeline,
    full: bool,
    version: int,
    quarantine: list[pl.DataFrame],
    resolved: list[pl.DataFrame],
    result: SyncResult,
) -> bool:
    """Stage advertisers and campaigns; in incremental mode only what changed. Returns whether anything did."""
    changed = False
    valid_advertisers = pl.Series("id", [], pl.UInt32)
    for table in DIMENSIONS:
        rows = reader.read_all(table)
        cleaned = clean_advertisers(rows) if table == "advertiser" else clean_campaigns(rows, valid_advertisers)
        if table == "advertiser":
            valid_advertisers = cleaned.valid["id"]
        if full:
            upserts, new_quarantine = full_load_rows(cleaned, version), cleaned.quarantined
        else:
            changes = dimension_changes(client, table, cleaned, version)
            upserts, new_quarantine = changes.upserts, changes.quarantined
            resolved.append(changes.resolved)
            changed = changed or not changes.empty
        quarantine.append(new_quarantine)
        pipeline.write(table, upserts.to_arrow())
        summary = result.tables.setdefault(table, TableSummary())
        summary.extracted = rows.num_rows
        summary.loaded = upserts.height
        summary.quarantined = new_quarantine.height
        _note_ids(summary, cleaned.valid["id"])
    return changed


def _sync_fact(
    reader: SourceReader,
    pipeline: _Pipeline,
    options: SyncOptions,
    table: str,
    previous: FactState,
    quarantine: list[pl.DataFrame],
    result: SyncResult,
) -> FactState:
    """Stage the rows that arrived since `previous`: late rows in its gaps, and everything above its high-water id."""
    summary = result.tables.setdefault(table, TableSummary())
    now = reader.snapshot.taken_at
    gaps: list[Gap] = []
    if previous.gaps:
        rows = reader.read_ids_in(table, [(gap.lo, gap.hi) for gap in previous.gaps])
        _stage_fact_rows(pipeline, table, rows, now, quarantine, summary)
        gaps = _open_gaps(previous.gaps, rows.column("id").to_numpy(), reader.snapshot)
    high_water = reader.max_id(table)
    chunks = prefetch(reader.read_id_range(table, previous.high_water, high_water, options.chunk_rows))
    for after, upto, rows in _timed(chunks, pipeline.timings, "extract_wait"):
        _stage_fact_rows(pipeline, table, rows, now, quarantine, summary)
        ids = rows.column("id").to_numpy()
        gaps += [Gap(lo, hi, reader.snapshot.xid_bound) for lo, hi in missing_ranges(ids, after, upto)]
        if options.progress:
            options.progress(table, upto - previous.high_water, high_water - previous.high_water)
    high_water = max(high_water, previous.high_water)
    anchor = reader.created_at_of(table, high_water) if high_water else None
    return FactState(high_water, anchor.isoformat() if anchor else previous.anchor_created_at, gaps)


def _stage_fact_rows(
    pipeline: _Pipeline,
    table: str,
    rows: pa.Table,
    now: datetime,
    quarantine: list[pl.DataFrame],
    summary: TableSummary,
) -> None:
    began = time.perf_counter()
    cleaned: Cleaned = clean_facts(table, rows, now)
    pipeline.timings["clean"] += time.perf_counter() - began
    pipeline.write(table, cleaned.valid.to_arrow())
    quarantine.append(cleaned.quarantined)
    summary.extracted += rows.num_rows
    summary.loaded += cleaned.valid.height
    summary.quarantined += cleaned.quarantined.height
    _note_ids(summary, cleaned.valid["id"])


def _timed[T](items: Iterator[T], timings: dict[str, float], key: str) -> Iterator[T]:
    """Yield from `items`, adding the time spent waiting for each to `timings[key]`."""
    while True:
        began = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            timings[key] += time.perf_counter() - began
        yield item


def missing_ranges(ids: np.ndarray, after: int, upto: int) -> list[tuple[int, int]]:
    """Inclusive id ranges within (after, upto] that are not in `ids`."""
    bounds = np.concatenate(([after], np.sort(ids).astype(np.int64), [upto + 1]))
    holes = np.nonzero(np.diff(bounds) > 1)[0]
    return [(int(bounds[i]) + 1, int(bounds[i + 1]) - 1) for i in holes]


def _open_gaps(gaps: list[Gap], found: np.ndarray, snapshot: Snapshot) -> list[Gap]:
    """The parts of earlier gaps, re-read as `found` with `snapshot`, still empty that some transaction might yet fill.

    A gap is closed for good once `snapshot`'s xmin has reached its `xid_bound`: every transaction that could
    hold its ids has ended, so a row one committed is visible to `snapshot` and was read into `found`.
    A gap without a bound (from an older state file) gets this run's: it is above every transaction id
    assigned before this snapshot, so above those of the transactions that drew its ids even earlier.
    """
    still_open = []
    for gap in gaps:
        bound = snapshot.xid_bound if gap.xid_bound is None else gap.xid_bound
        if snapshot.xmin >= bound:
            continue
        inside = found[(found >= gap.lo) & (found <= gap.hi)]
        still_open += [Gap(lo, hi, bound) for lo, hi in missing_ranges(inside, gap.lo - 1, gap.hi)]
    return still_open


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


def _reset_reason(reader: SourceReader, state: SyncState) -> str | None:
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


def _note_ids(summary: TableSummary, ids: pl.Series) -> None:
    if ids.is_empty():
        return
    low, high = int(ids.min()), int(ids.max())
    summary.min_id = low if summary.min_id is None else min(summary.min_id, low)
    summary.max_id = high if summary.max_id is None else max(summary.max_id, high)


_SYNC_RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("table_name", pa.string()),
        ("mode", pa.string()),
        ("rows_extracted", pa.uint64()),
        ("rows_loaded", pa.uint64()),
        ("rows_quarantined", pa.uint64()),
        ("min_id", pa.int64()),
        ("max_id", pa.int64()),
        ("started_at", pa.timestamp("us", "UTC")),
        ("finished_at", pa.timestamp("us", "UTC")),
        ("status", pa.string()),
        ("error", pa.string()),
        ("updated_at", pa.timestamp("us", "UTC")),
    ]
)


def _record(client: Client, result: SyncResult, started: datetime, status: str, error: str | None = None) -> None:
    """Write this run's rows to sync_runs (one per table; newest updated_at wins)."""
    now = datetime.now(UTC)
    tables = result.tables or {name: TableSummary() for name in (*DIMENSIONS, *FACTS)}
    rows = [
        {
            "run_id": result.run_id,
            "table_name": name,
            "mode": result.mode,
            "rows_extracted": t.extracted,
            "rows_loaded": t.loaded,
            "rows_quarantined": t.quarantined,
            "min_id": t.min_id,
            "max_id": t.max_id,
            "started_at": started,
            "finished_at": None if status in ("running", "interrupted") else now,
            "status": status,
            "error": error,
            "updated_at": now,
        }
        for name, t in tables.items()
    ]
    try:
        # Arrow, not Python rows: clickhouse-connect's row path imports pandas, seconds of start-up.
        client.insert_arrow("sync_runs", pa.Table.from_pylist(rows, schema=_SYNC_RUNS_SCHEMA))
    except Exception:
        # The run's outcome matters more than its log line: never let bookkeeping mask the real error.
        log.exception("could not record run %s in sync_runs", result.run_id)


def _versions() -> dict[str, str]:
    return {name: package_version(name) for name in ("adpipe", "polars", "pyarrow", "connectorx", "clickhouse-connect")}
