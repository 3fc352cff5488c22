"""The source and how far the warehouse is behind it: the numbers behind `adpipe stats` and `adpipe status`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.analytics.kpi import warehouse_client
from pipeline.catalog import SOURCE_TABLES, live_rows
from pipeline.config import Settings
from pipeline.source.capture import slot_info
from pipeline.source.postgres import connect as connect_postgres
from pipeline.sync.state import load_state
from pipeline.warehouse.quarantine import quarantine_counts

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


@dataclass(frozen=True)
class SourceTableStats:
    table: str
    rows: int
    min_id: int | None
    max_id: int | None
    min_created_at: datetime | None
    max_created_at: datetime | None
    quarantined: int
    """Rows the last committed sync set aside."""


def source_stats(settings: Settings) -> list[SourceTableStats]:
    """Per source table: rows, id and created_at ranges, and its rows in quarantine as of the committed sync.

    The quarantine counts come from the state file, so this opens neither ClickHouse (the embedded engine serves
    one process at a time) nor the staged Parquet; a state from before the counts were kept is read from the
    staged quarantine parts instead.
    """
    state = load_state(settings.home)
    quarantined = state.quarantined
    if quarantined is None and state.last_run_id is None:
        quarantined = {}  # nothing synced yet, so nothing set aside
    elif quarantined is None:
        from pipeline.sync.stage import quarantined_rows

        quarantined = quarantined_rows(settings)
    stats = []
    with connect_postgres(settings) as conn:
        for table in SOURCE_TABLES:
            row = conn.execute(
                f"SELECT count(*), min(id), max(id), min(created_at), max(created_at) FROM {table}"
            ).fetchone()
            stats.append(SourceTableStats(table, *row, quarantined.get(table, 0)))
    return stats


@dataclass(frozen=True)
class TableStatus:
    table: str
    postgres_rows: int
    postgres_max_id: int | None
    clickhouse_rows: int
    clickhouse_max_id: int | None
    quarantined: int
    rows_synced: int
    """Rows loaded into this table by every successful or recovered run in `sync_runs`: a counter that only grows
    (a full run counts every row it reloads)."""

    @property
    def behind(self) -> int:
        """Source rows neither in the warehouse nor in quarantine (negative when source rows were deleted)."""
        return self.postgres_rows - self.clickhouse_rows - self.quarantined


@dataclass(frozen=True)
class CaptureStatus:
    """The replication slot the committed state follows, and the WAL it keeps the source from recycling."""

    slot: str | None
    """None: change capture is off for this warehouse."""
    present: bool
    wal_status: str | None
    retained_bytes: int | None
    warning_bytes: int

    @property
    def lagging(self) -> bool:
        return self.retained_bytes is not None and self.retained_bytes > self.warning_bytes


RUN_DURATION_BUCKETS: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
"""Upper bounds, in seconds, of the run-duration histogram's buckets; a last bucket, +Inf, holds every run."""


@dataclass(frozen=True)
class RunDurations:
    """A histogram of the wall durations of the successful runs in `sync_runs`, Prometheus style.

    `counts[i]` is the number of runs that took at most `buckets[i]` seconds (cumulative); the last count, one more
    than there are bounds, is the +Inf bucket and equals `count`. `sum` is their total duration in seconds.
    """

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int


@dataclass(frozen=True)
class WarehouseStatus:
    tables: list[TableStatus]
    last_run_id: str | None
    last_success_at: datetime | None
    """When the last committed run recorded its success (None: no successful run on record)."""
    capture: CaptureStatus
    last_snapshot_at: datetime | None
    """When the last committed run started: the warehouse holds the source as of about then (None: no run)."""
    run_durations: RunDurations

    @property
    def age_seconds(self) -> float | None:
        if self.last_success_at is None:
            return None
        return (datetime.now(UTC) - self.last_success_at).total_seconds()

    @property
    def lag_seconds(self) -> float | None:
        """How far the warehouse trails the source in time: now minus `last_snapshot_at`."""
        if self.last_snapshot_at is None:
            return None
        return (datetime.now(UTC) - self.last_snapshot_at).total_seconds()


def format_age(seconds: float) -> str:
    """A duration the way `status` shows it: `2h05m`, or `3m07s` under an hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def warehouse_status(settings: Settings, client: Client | None = None) -> WarehouseStatus:
    """The source against the warehouse, per table. A read: it creates nothing (`warehouse_client`)."""
    client = client or warehouse_client(settings)
    quarantined = quarantine_counts(client)
    synced = rows_synced(client)
    tables = []
    with connect_postgres(settings) as conn:
        for table in SOURCE_TABLES:
            pg_rows, pg_max = conn.execute(f"SELECT count(*), max(id) FROM {table}").fetchone()
            ch_rows, ch_max = client.query(f"SELECT count(), max(id) FROM {live_rows(table)}").result_rows[0]
            tables.append(
                TableStatus(
                    table,
                    pg_rows,
                    pg_max,
                    ch_rows,
                    ch_max if ch_rows else None,
                    quarantined.get(table, 0),
                    synced.get(table, 0),
                )
            )
        state = load_state(settings.home)
        info = slot_info(conn, state.capture_slot) if state.capture_slot else None
    capture = CaptureStatus(
        state.capture_slot,
        info is not None,
        info.wal_status if info else None,
        info.retained_bytes if info else None,
        settings.capture_lag_warning_bytes,
    )
    started = finished = None
    if state.last_run_id:
        # GROUP BY: no row at all when the run is not on record (min() of no rows would be 1970, not NULL).
        rows = client.query(
            "SELECT min(started_at), maxIf(finished_at, status IN ('success', 'recovered'))"
            " FROM sync_runs FINAL WHERE run_id = {run:String} GROUP BY run_id",
            parameters={"run": state.last_run_id},
        ).result_rows
        if rows:
            # clickhouse-connect returns naive datetimes for UTC columns.
            started = rows[0][0].replace(tzinfo=UTC)
            finished = rows[0][1].replace(tzinfo=UTC) if rows[0][1] else None
    return WarehouseStatus(tables, state.last_run_id, finished, capture, started, run_durations(client))


def rows_synced(client: Client) -> dict[str, int]:
    """Per table, the rows loaded by every successful or recovered run on record in `sync_runs`."""
    rows = client.query(
        "SELECT table_name, sum(rows_loaded) FROM sync_runs FINAL"
        " WHERE status IN ('success', 'recovered') GROUP BY table_name"
    ).result_rows
    return {table: int(loaded) for table, loaded in rows}


def run_durations(client: Client, buckets: tuple[float, ...] = RUN_DURATION_BUCKETS) -> RunDurations:
    """The histogram of successful runs' wall durations, counted in ClickHouse in one query.

    A run's duration is its last `finished_at` minus its first `started_at` over its rows (one per table), in
    microseconds (the columns are DateTime64(6)). Recovered runs are left out: their start is when the run that
    staged them began, before the crash, so their span is not a run's duration.
    """
    counts = ", ".join(f"countIf(seconds <= {bound!r})" for bound in buckets)
    row = client.query(
        f"SELECT {counts}, count(), sum(seconds) FROM ("
        " SELECT run_id, dateDiff('microsecond', min(started_at), max(finished_at)) / 1e6 AS seconds"
        " FROM sync_runs FINAL WHERE status = 'success' AND finished_at IS NOT NULL GROUP BY run_id)"
    ).result_rows[0]
    count = int(row[-2])
    return RunDurations(tuple(buckets), (*(int(n) for n in row[:-2]), count), float(row[-1] or 0.0), count)


def status_document(report: WarehouseStatus) -> dict[str, Any]:
    """`status --json`: the report in plain JSON types, datetimes in ISO 8601 UTC (`2026-11-20T12:00:00.000000Z`)."""
    durations = report.run_durations
    lag = report.lag_seconds
    return {
        "tables": [
            {
                "table": t.table,
                "postgres_rows": t.postgres_rows,
                "postgres_max_id": t.postgres_max_id,
                "clickhouse_rows": t.clickhouse_rows,
                "clickhouse_max_id": t.clickhouse_max_id,
                "behind": t.behind,
                "quarantined": t.quarantined,
                "rows_synced": t.rows_synced,
            }
            for t in report.tables
        ],
        "last_run_id": report.last_run_id,
        "last_success_at": _iso(report.last_success_at),
        "last_snapshot_at": _iso(report.last_snapshot_at),
        "lag_seconds": None if lag is None else round(lag, 3),
        "capture": {
            "slot": report.capture.slot,
            "present": report.capture.present,
            "wal_status": report.capture.wal_status,
            "retained_bytes": report.capture.retained_bytes,
            "warning_bytes": report.capture.warning_bytes,
            "lagging": report.capture.lagging,
        },
        "run_duration_seconds": {
            "buckets": [
                *({"le": bound, "count": n} for bound, n in zip(durations.buckets, durations.counts, strict=False)),
                {"le": "+Inf", "count": durations.counts[-1]},
            ],
            "sum": round(durations.sum, 6),
            "count": durations.count,
        },
    }


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
