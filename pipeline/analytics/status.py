"""The source and how far the warehouse is behind it: the numbers behind `adpipe stats` and `adpipe status`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

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
    quarantined = load_state(settings.home).quarantined
    if quarantined is None:
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


@dataclass(frozen=True)
class WarehouseStatus:
    tables: list[TableStatus]
    last_run_id: str | None
    last_success_at: datetime | None
    capture: CaptureStatus

    @property
    def age_seconds(self) -> float | None:
        if self.last_success_at is None:
            return None
        return (datetime.now(UTC) - self.last_success_at).total_seconds()


def format_age(seconds: float) -> str:
    """A duration the way `status` shows it: `2h05m`, or `3m07s` under an hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def warehouse_status(settings: Settings, client: Client | None = None) -> WarehouseStatus:
    """The source against the warehouse, per table. A read: it creates nothing (`warehouse_client`)."""
    client = client or warehouse_client(settings)
    quarantined = quarantine_counts(client)
    tables = []
    with connect_postgres(settings) as conn:
        for table in SOURCE_TABLES:
            pg_rows, pg_max = conn.execute(f"SELECT count(*), max(id) FROM {table}").fetchone()
            ch_rows, ch_max = client.query(f"SELECT count(), max(id) FROM {live_rows(table)}").result_rows[0]
            tables.append(
                TableStatus(table, pg_rows, pg_max, ch_rows, ch_max if ch_rows else None, quarantined.get(table, 0))
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
    finished = None
    if state.last_run_id:
        rows = client.query(
            "SELECT max(finished_at) FROM sync_runs FINAL"
            " WHERE run_id = {run:String} AND status IN ('success', 'recovered')",
            parameters={"run": state.last_run_id},
        ).result_rows
        if rows and rows[0][0]:
            # clickhouse-connect returns naive datetimes for UTC columns.
            finished = rows[0][0].replace(tzinfo=UTC)
    return WarehouseStatus(tables, state.last_run_id, finished, capture)
