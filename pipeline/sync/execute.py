"""One run, from its opened source to its committed state: plan, extract, clean, stage, load, commit; and the
replay of staged runs. Entered through `pipeline.sync.run`, which opens the source before importing this module.

A run is a load package (see `stage`): it is staged completely, published, loaded with
deduplicated inserts, and only then committed to the state file. A run that was published but
not committed (a crash between load and commit) is loaded again by the next sync before it does
anything else; its parts carry the same deduplication tokens, so nothing is counted twice.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version as package_version
from pathlib import PurePath
from queue import Queue

import numpy as np
import polars as pl
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from pipeline.catalog import DIMENSIONS, FACTS, FIRST_ID, LOAD_ORDER, RETRACTED
from pipeline.config import Settings
from pipeline.errors import AdpipeError, StagingError
from pipeline.killpoints import kill_point
from pipeline.options import Mode, Progress, SyncOptions
from pipeline.prefetch import Worker
from pipeline.source.capture import format_lsn, lsn_value
from pipeline.staging_home import bind_staging
from pipeline.sync.capture import advance
from pipeline.sync.changes import dimension_changes, full_load_rows
from pipeline.sync.clean import (
    IN_THE_FUTURE,
    Cleaned,
    clean_advertisers,
    clean_campaigns,
    clean_facts,
    quarantine_arrow,
)
from pipeline.sync.extract import SourceReader
from pipeline.sync.fact_changes import fact_changes
from pipeline.sync.gaps import new_gaps, open_gaps
from pipeline.sync.load import create_shadow, delete_retracted, drop_shadow, fold_deletes, load_part, swap_in
from pipeline.sync.plan import plan_mode
from pipeline.sync.repair import bucket_ids, differing_buckets
from pipeline.sync.run_source import OpeningSource, RunSource, already_synced, previous_fact
from pipeline.sync.runlog import (
    SyncResult,
    TableSummary,
    close_interrupted_runs,
    record,
    record_recovered,
    record_start,
)
from pipeline.sync.stage import Run, RunWriter, list_runs, new_run_id, staged_run, state_runs, verify_runs
from pipeline.sync.state import FactState, Gap, SyncState, committed_at, save_state
from pipeline.warehouse import client as clickhouse
from pipeline.warehouse.quarantine import quarantine_counts, quarantined_ids
from pipeline.warehouse.schema import apply_schema

log = logging.getLogger(__name__)

FULL_DIMENSION_VERSION = 1
RETRACTED_FROM = {retracted: fact for fact, retracted in RETRACTED.items()}


def run_with_source(
    client: Client,
    settings: Settings,
    options: SyncOptions,
    mode: Mode,
    state: SyncState,
    opening: OpeningSource,
    recovered: list[str],
) -> SyncResult:
    """The run, on the warehouse `client`, from the source `opening` (whose result it takes and closes). `recovered`:
    runs of an earlier sync this one loaded first; runs left `running` by a sync that died are closed as failed."""
    interrupted = close_interrupted_runs(client, set(recovered), state.last_run_id, partial(committed_run, settings))
    result = _run(client, settings, options, mode, state, opening.result)
    result.recovered, result.interrupted = recovered, interrupted
    return result


def committed_run(settings: Settings, run_id: str) -> tuple[Run, datetime] | None:
    """The run the state file names (`run_id`), and when it was committed (the state file's time); None if not
    staged."""
    run = staged_run(settings.staging_dir, run_id)
    return (run, committed_at(settings.home)) if run else None


def open_warehouse(settings: Settings, schema_ready: bool) -> tuple[Client, dict[str, float]]:
    """The warehouse's client, with the schema applied unless `schema_ready`; and how long each took."""
    began = time.perf_counter()
    client = clickhouse.connect(settings)
    opened = time.perf_counter()
    if not schema_ready:
        apply_schema(client)
    return client, {"warehouse_open": opened - began, "schema": time.perf_counter() - opened}


def recover_pending_runs(client: Client, settings: Settings, pending: list[Run]) -> None:
    """Load and commit runs that were published but not committed (the previous sync died mid-load)."""
    for run in pending:
        log.warning("loading run %s, staged but not committed by an earlier sync", run.run_id)
        load_run(client, run)
        commit(client, settings, run)
        settle(client, settings, run)
        record_recovered(client, run)


def replay_runs(settings: Settings, progress: Progress | None = None) -> list[str]:
    """Rebuild the warehouse from the staged runs alone (no Postgres): the latest full run, then the rest."""
    runs = list_runs(settings.staging_dir)
    chosen = state_runs(runs, runs[-1].run_id if runs else None)
    if not chosen:
        raise AdpipeError(f"nothing to replay: no full run staged in {settings.staging_dir}")
    # Checked before anything is loaded: a part found damaged half way would leave the warehouse half rebuilt.
    if problems := verify_runs(chosen).problems:
        first, more = problems[0], len(problems) - 1
        also = f", and {more} more (`adpipe snapshots verify` lists them)" if more else ""
        raise StagingError(f"staged run {first.run_id}: {first.path}: {first.problem}{also}; nothing was replayed")
    client = clickhouse.connect(settings)
    apply_schema(client)
    for done, run in enumerate(chosen, start=1):
        load_run(client, run)
        commit(client, settings, run)
        fold_deletes(client, deleted_from(run))
        record_recovered(client, run)  # the warehouse's history says what it holds (`plan_mode` relies on it)
        if progress:
            progress("replay", done, len(chosen))
    return [run.run_id for run in chosen]


def load_run(client: Client, run: Run) -> None:
    """Load a published run: a full run through a shadow database swap, an incremental one in place."""
    if run.mode != Mode.FULL:
        load_parts(client, run)
        return
    shadow = create_shadow(client)
    try:
        load_parts(client, run, database=shadow)
    except BaseException:
        drop_shadow(client, shadow)
        raise
    swap_in(client, shadow)


def load_parts(client: Client, run: Run, database: str | None = None) -> None:
    """Insert every part of a published run, in LOAD_ORDER, into `database` (default: the client's); after a fact's
    retractions, delete the versions they retract. Only incremental runs have retractions, loaded in place."""
    for table in LOAD_ORDER:
        columns = list(run.manifest["tables"].get(table, {}).get("schema", {}))
        parts = run.parts(table)
        for part in parts:
            path = run.directory / part.path
            load_part(client, table, run.store, path, part.sha256, columns, run.token_run_id, database=database)
        if parts and table in RETRACTED_FROM:
            delete_retracted(client, RETRACTED_FROM[table], table, run.run_id)


def commit(client: Client, settings: Settings, run: Run) -> None:
    """Make the run's resulting state the committed one (atomic rename), with the quarantine it leaves.

    The run is loaded, so the warehouse's quarantine is the one it leaves: one query, where the staged quarantine
    parts since the last full run would be read again on every commit.
    """
    state = SyncState.from_json(run.manifest["state_after"])
    state.quarantined = quarantine_counts(client)
    save_state(settings.home, state)


def _run(
    client: Client,
    settings: Settings,
    options: SyncOptions,
    mode: Mode,
    state: SyncState,
    open_source: Callable[[], RunSource],
) -> SyncResult:
    """Plan the run in the source snapshot, then name and record it with the mode it will really run in."""
    started = datetime.now(UTC)

    def refused(exc: BaseException) -> None:
        # A refused run is on record too, under the mode it was asked for (`sync_runs`, docs: Watching the sync).
        record(client, SyncResult(new_run_id(mode), mode), started, "failed", error=str(exc) or type(exc).__name__)

    try:
        source = open_source()
    except BaseException as exc:
        refused(exc)
        raise
    # The stage closes the source as soon as its reads are done; whatever stops the run before (Ctrl-C too, at any
    # point) closes it here, cancelling the reads still running.
    with source.closing:
        try:
            planned_mode = plan_mode(
                source.reader, client, state, mode, options.on_reset, source.changes, options.repair
            )
        except BaseException as exc:
            refused(exc)
            raise
        result = SyncResult(new_run_id(planned_mode), planned_mode)
        try:
            record_start(client, result, started)  # raises when the warehouse will not take it: nothing is loaded
            run = _stage_and_load(client, settings, options, source, state, result)
            kill_point("loaded")
            commit(client, settings, run)
            kill_point("committed")
            settled = time.perf_counter()
            settle(client, settings, run)
            result.timings["settle"] = time.perf_counter() - settled
        except BaseException as exc:
            record(client, result, started, "failed", error=str(exc) or type(exc).__name__)
            raise
    record(client, result, started, "success")
    return result


def settle(client: Client, settings: Settings, run: Run) -> None:
    """After a run is committed: move its replication slot past the changes it applied, and meanwhile fold its
    deletes into the fact tables' parts. The one is Postgres' work and the other the engine's, so they overlap."""
    with Worker("adpipe-advance", backlog=1) as advancing:
        advancing.submit(advance_capture, settings, run)
        fold_deletes(client, deleted_from(run))
        advancing.wait()


def advance_capture(settings: Settings, run: Run) -> None:
    """Move the committed run's replication slot past the changes the run applied."""
    capture = run.manifest.get("capture") or {}
    advance_to = capture.get("advance_to")
    advance(settings, capture.get("slot"), lsn_value(advance_to) if advance_to else None)


def deleted_from(run: Run) -> list[str]:
    """The fact tables a loaded run deleted versions from (`delete_retracted`): those whose retractions it staged."""
    return [RETRACTED_FROM[table] for table in LOAD_ORDER if table in RETRACTED_FROM and run.parts(table)]


class _Pipeline:
    """Writes parts of one run and, for a full run, loads each into the shadow database as soon as it is written.

    Loading overlaps with extracting the next chunk (the drivers release the GIL). Two parts load side by side, each
    on a client of its own (`clients`: the run's, and a second one it closes), so the parts still loading when the
    last one is written take half the time (docs/performance.md). At most two loads wait at a time.
    """

    def __init__(self, clients: list[Client], writer: RunWriter, shadow: str | None) -> None:
        self.writer = writer
        self.shadow = shadow
        self.clients = clients
        self.idle: Queue[Client] = Queue()
        for client in clients:
            self.idle.put(client)
        self.pool = ThreadPoolExecutor(max_workers=len(clients), thread_name_prefix="adpipe-load") if shadow else None
        self.pending: list[Future[None]] = []
        self.timings: dict[str, float] = defaultdict(float)
        self.timings_lock = threading.Lock()

    def write(self, table: str, data: pa.Table, *, even_empty: bool = False) -> None:
        if data.num_rows == 0 and not even_empty:
            return
        with _stopwatch(self.timings, "stage_write"):
            path = self.writer.write_part(table, data)
        if self.pool is not None:
            entry = self.writer.tables[table]
            while len(self.pending) >= 2:
                self.pending.pop(0).result()
            self.pending.append(self.pool.submit(self._load, table, path, entry.parts[-1].sha256, list(entry.schema)))

    def _load(self, table: str, path: PurePath, sha: str, columns: list[str]) -> None:
        client = self.idle.get()
        timings: dict[str, float] = defaultdict(float)
        try:
            with _stopwatch(timings, "load_overlapped"):
                writer = self.writer
                load_part(client, table, writer.store, path, sha, columns, writer.run_id, database=self.shadow)
        finally:
            self.idle.put(client)
            with self.timings_lock:
                for key, seconds in timings.items():
                    self.timings[key] += seconds

    def finish(self) -> None:
        """Wait for the loads, then close the clients the pipeline opened (the first is the run's)."""
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pending.clear()
            if self.pool is not None:
                self.pool.shutdown()
            for client in self.clients[1:]:
                client.close()
            del self.clients[1:]


def _stage_and_load(
    client: Client,
    settings: Settings,
    options: SyncOptions,
    source: RunSource,
    state: SyncState,
    result: SyncResult,
) -> Run:
    """Extract, clean and stage the run from the planned source (closed here), publish it, load it."""
    reader, changes = source.reader, source.seen
    began, began_cpu = time.perf_counter(), time.process_time()
    mode = Mode(result.mode)
    writer = RunWriter(settings.staging_dir, result.run_id)
    kill_point("staging-started")
    pipeline: _Pipeline | None = None
    shadow: str | None = None
    try:
        with source.closing:
            shadow = create_shadow(client) if mode is Mode.FULL else None
            loaders = [client, clickhouse.connect_another(settings)] if shadow else [client]
            pipeline = _Pipeline(loaders, writer, shadow)
            state_after = _extract_all(client, source, pipeline, options, mode, state, result)
        pipeline.finish()
        extract_seconds = time.perf_counter() - began
        bind_staging(writer.store, settings)
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
                "capture": {
                    "slot": source.slot,
                    "advance_to": format_lsn(changes.advance_to) if changes.advance_to else None,
                    "transactions": changes.transactions,
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
            with suppress(Exception):  # the error that stopped the run is the one to report
                pipeline.finish()
        if shadow is not None:
            drop_shadow(client, shadow)
        writer.discard()
        raise
    kill_point("published")
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
        "total_cpu": time.process_time() - began_cpu,
    }
    return run


def _extract_all(
    client: Client,
    source: RunSource,
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
    reader = source.reader
    changed = _sync_dimensions(client, reader, pipeline, full, version, quarantine, resolved, result)
    # Rows set aside for a created_at ahead of the source's clock may be due now: compared again, like changed rows.
    due = {} if full else quarantined_ids(client, IN_THE_FUTURE)
    # A repair compares every quarantined id too: a quarantined row that left the source is in no differing bucket,
    # as neither side holds it.
    set_aside = quarantined_ids(client) if options.repair and not full else {}
    facts = {}
    for table in FACTS:
        previous = previous_fact(state, table, mode)
        facts[table], below_first = _sync_fact(source, pipeline, options, table, previous, quarantine, result, full)
        if not full:
            ids = source.seen.changed.get(table, frozenset()) | below_first | due.get(table, set())
            if source.changes is not None and facts[table].high_water < previous.high_water:
                ids |= _drawn_again(client, reader, table, facts[table].high_water)
            if options.repair:
                with _stopwatch(pipeline.timings, "repair"):
                    differing = differing_buckets(reader, client, table, previous.high_water)
                    ids = ids | bucket_ids(reader, client, table, differing)
                    ids |= {i for i in set_aside.get(table, set()) if i <= previous.high_water}
            changed |= _apply_fact_changes(client, source, pipeline, table, ids, previous, quarantine, resolved, result)
    pipeline.write("quarantine", quarantine_arrow(quarantine, version))
    pipeline.write("quarantine", quarantine_arrow(resolved, version, resolved=True))
    dimension_version = version if full or changed else state.dimension_version
    return SyncState(result.run_id, dimension_version, facts, source_lsn=reader.snapshot.lsn, capture_slot=source.slot)


def _drawn_again(client: Client, reader: SourceReader, table: str, upto: int) -> frozenset[int]:
    """The mark came down to the source's max id `upto`: the ids restarted, or the newest rows were deleted. The
    source's ids above the largest the warehouse holds up to there reuse ids of rows deleted before, by this run or
    an earlier one; no change names those of an earlier one (only deletes were in the slot), so they are compared
    with the warehouse like changed rows. Usually none, when only the newest rows were deleted."""
    query = f"SELECT max(id) FROM {clickhouse.quote_identifier(table)} WHERE id <= {{upto:UInt64}}"
    held = client.command(query, parameters={"upto": upto})
    if held >= upto:
        return frozenset()
    return frozenset(bucket_ids(reader, client, table, [(held + 1, upto)]))  # the warehouse holds none of them


def _apply_fact_changes(
    client: Client,
    source: RunSource,
    pipeline: _Pipeline,
    table: str,
    changed: frozenset[int],
    previous: FactState,
    quarantine: list[pl.DataFrame],
    resolved: list[pl.DataFrame],
    result: SyncResult,
) -> bool:
    """Stage what changed among the `changed` ids of rows synced before; returns whether anything had.

    Ids above the high-water mark or in its gaps are left out: `_sync_fact` reads those rows anyway.
    """
    ids = already_synced(changed, previous)
    if not ids:
        return False
    with _stopwatch(pipeline.timings, "fact_changes"):
        rows = source.rows_of(table, ids)
        changes = fact_changes(client, table, ids, rows, source.reader.snapshot.taken_at, result.run_id)
    pipeline.write(RETRACTED[table], changes.retractions.to_arrow())
    pipeline.write(table, changes.inserts.to_arrow())
    quarantine.append(changes.quarantined)
    resolved.append(changes.resolved)
    summary = result.tables.setdefault(table, TableSummary())
    summary.retracted += changes.retractions.height
    summary.loaded += changes.inserts.height
    summary.quarantined += changes.quarantined.height
    return not (changes.retractions.is_empty() and changes.inserts.is_empty() and changes.quarantined.is_empty())


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
        # A full run's snapshot holds every dimension, even one with no valid row (an empty source, every campaign
        # quarantined): `reconcile` reads its columns from the staged part.
        pipeline.write(table, upserts.to_arrow(), even_empty=full)
        summary = result.tables.setdefault(table, TableSummary())
        summary.extracted = rows.num_rows
        summary.loaded = upserts.height
        summary.quarantined = new_quarantine.height
        _note_ids(summary, cleaned.valid["id"])
    return changed


def _sync_fact(
    source: RunSource,
    pipeline: _Pipeline,
    options: SyncOptions,
    table: str,
    previous: FactState,
    quarantine: list[pl.DataFrame],
    result: SyncResult,
    full: bool,
) -> tuple[FactState, frozenset[int]]:
    """Stage the rows that arrived since `previous`: late rows in its gaps, and everything above its high-water id.

    Rows below `FIRST_ID`, which every run reads, are staged (into quarantine) by a full run; an incremental run
    returns their ids instead, to be compared with the quarantine the warehouse holds like changed rows (so a row
    set aside once is not set aside again by every run)."""
    summary = result.tables.setdefault(table, TableSummary())
    snapshot = source.reader.snapshot
    read = source.fact_read(table, previous, options.chunk_rows)
    gaps: list[Gap] = []
    below_first: frozenset[int] = frozenset()
    for chunk in _timed(read.chunks, pipeline.timings, "extract_wait"):
        rows = chunk.rows
        if chunk.covers is None and not full:
            ids = pl.from_arrow(rows.column("id"))
            below_first = frozenset(ids.filter(ids < FIRST_ID).to_list())
            rows = rows.filter((ids >= FIRST_ID).to_arrow())
        _stage_fact_rows(pipeline, table, rows, snapshot.taken_at, quarantine, summary)
        if chunk.covers is None:
            gaps += open_gaps(previous.gaps, _ids(rows), snapshot)
            continue
        after, upto = chunk.covers
        gaps += new_gaps(_ids(chunk.rows), after, upto, snapshot)
        if options.progress:
            options.progress(table, upto - previous.high_water, read.high_water - previous.high_water)
    high_water = max(read.high_water, previous.high_water)
    if read.high_water < high_water and (options.repair or source.changes is not None):
        # The source has no id above its max now (the newest rows deleted, or every row and the ids restarted), and
        # the warehouse has none either once this run is in: a repair compares every id up to the old mark, change
        # capture retracts each delete. The mark comes down to the max, so that ids drawn again above it are read.
        high_water = read.high_water
        gaps = [dataclasses.replace(gap, hi=min(gap.hi, high_water)) for gap in gaps if gap.lo <= high_water]
    anchor = source.reader.anchor_of(table, high_water) if high_water else None
    return FactState(high_water, anchor or previous.anchor_created_at, gaps), below_first


def _ids(rows: pa.Table) -> np.ndarray:
    # Through Polars: pyarrow's own to_numpy imports pandas (a quarter of a second of every sync process).
    return pl.from_arrow(rows.column("id")).to_numpy()


def _stage_fact_rows(
    pipeline: _Pipeline,
    table: str,
    rows: pa.Table,
    now: datetime,
    quarantine: list[pl.DataFrame],
    summary: TableSummary,
) -> None:
    with _stopwatch(pipeline.timings, "clean"):
        cleaned: Cleaned = clean_facts(table, rows, now)
    pipeline.write(table, cleaned.valid.to_arrow())
    quarantine.append(cleaned.quarantined)
    summary.extracted += rows.num_rows
    summary.loaded += cleaned.valid.height
    summary.quarantined += cleaned.quarantined.height
    _note_ids(summary, cleaned.valid["id"])


@contextmanager
def _stopwatch(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall time to `timings[key]`, and the CPU time of the thread running it to `key`_cpu."""
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        timings[key] += time.perf_counter() - wall
        timings[f"{key}_cpu"] += time.thread_time() - cpu


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


def _note_ids(summary: TableSummary, ids: pl.Series) -> None:
    if ids.is_empty():
        return
    low, high = int(ids.min()), int(ids.max())
    summary.min_id = low if summary.min_id is None else min(summary.min_id, low)
    summary.max_id = high if summary.max_id is None else max(summary.max_id, high)


def _versions() -> dict[str, str]:
    return {name: package_version(name) for name in ("adpipe", "polars", "pyarrow", "connectorx", "clickhouse-connect")}
