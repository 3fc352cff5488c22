"""Writing a load's results: the reports of the touched hours to Postgres (one transaction), the touched
days of cleaned events to ClickHouse, and reading the reports back."""

from __future__ import annotations

import logging
import time
from datetime import date, datetime, timedelta

import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from clickhouse_connect.driver.client import Client

from pipeline.config import Settings, mask_url
from pipeline.errors import AdpipeError, SourceError
from pipeline.prefetch import Worker
from pipeline.referral.events import EVENT_SCHEMA, HORIZON
from pipeline.referral.report import HOUR_KEY, HOURLY_SCHEMA
from pipeline.referral.staging import StagedPart, day_as_reported, day_parts
from pipeline.source import postgres
from pipeline.sqlfiles import sql_text, statements
from pipeline.storage import Store

log = logging.getLogger(__name__)

EVENTS_TABLE = "referral_events"


def write_reports(conn: psycopg.Connection, keys: pl.DataFrame, hourly: pl.DataFrame) -> None:
    """Replace the reports of `keys` (customer_id, hour) with `hourly` (HOURLY_SCHEMA rows of those keys).

    Delete and insert in one transaction: readers see the old hours or the new ones, never a mix, and a
    key that no longer has events loses its rows.
    """
    hourly = hourly.join(keys, on=HOUR_KEY, how="semi")
    copies = iter([keys.select(HOUR_KEY), *report_tables(hourly)])
    with conn.transaction(), conn.cursor() as cursor:
        for statement in statements(sql_text("referral", "postgres_replace_hours.sql")):
            if statement.startswith("COPY"):
                with cursor.copy(statement) as copy:
                    copy.write(next(copies).write_csv(include_header=False, datetime_format="%Y-%m-%d %H:%M:%S"))
            else:
                cursor.execute(statement)
    log.info("replaced %d report hours (%d with events)", len(keys), len(hourly))


REPORT_TABLES = ("page_loads", "clicks", "unique_user_clicks", "click_through_rate")
"""The tables of schema `referral` that `write_reports` replaces hours of."""


def check_report_grants(conn: psycopg.Connection) -> None:
    """Refuse, before anything is staged or sent, a role that may not replace the reports' hours: otherwise the load
    stages the events and sends them to ClickHouse, then fails on the reports. One catalog query, which needs no
    privilege itself."""
    rows = conn.execute(
        "SELECT has_schema_privilege('referral', 'USAGE'), has_database_privilege(current_database(), 'TEMP'),"
        " array(SELECT c.relname::text FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        "       WHERE n.nspname = 'referral' AND c.relname = ANY(%s)"
        "       AND NOT (has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'INSERT')"
        "                AND has_table_privilege(c.oid, 'DELETE')) ORDER BY c.relname)",
        (list(REPORT_TABLES),),
    ).fetchone()
    conn.rollback()
    usage, temporary, lacking = rows
    missing = [*([] if usage else ["USAGE on schema referral"]), *([] if temporary else ["TEMPORARY on the database"])]
    missing += [f"SELECT, INSERT, DELETE on referral.{table}" for table in lacking]
    if missing:
        url = mask_url(conn.url)
        raise SourceError(
            f"role {conn.info.user} may not write the referral reports at {url}: it needs {'; '.join(missing)}"
            " (docs/operations.md#grants)",
            url=url,
        )


def report_tables(hourly: pl.DataFrame) -> list[pl.DataFrame]:
    """The rows of referral.page_loads, clicks, unique_user_clicks and click_through_rate, from HOURLY_SCHEMA rows.

    A count table has a row where its count is not 0; click_through_rate has one per hour with a page load or a
    click, its ctr NULL without page loads (the same IEEE division Postgres would do)."""
    counts = [
        hourly.filter(pl.col(column) > 0).select(*HOUR_KEY, column)
        for column in ("page_loads", "clicks", "unique_user_clicks")
    ]
    page_loads = pl.when(pl.col("page_loads") > 0).then(pl.col("page_loads"))
    ctr = hourly.select(*HOUR_KEY, "page_loads", "related_clicks", ctr=pl.col("related_clicks") / page_loads)
    return [*counts, ctr]


def query_reports(
    settings: Settings, customer_id: int | None, start: datetime | None, end: datetime | None
) -> pl.DataFrame:
    """`adpipe events report`: the reports, optionally for one customer and hours in [start, end)."""
    if start is not None and end is not None and start >= end:
        raise AdpipeError(f"--from ({start:%Y-%m-%d %H:%M:%S}) must be before --to ({end:%Y-%m-%d %H:%M:%S})")
    with postgres.connect(settings) as conn:
        return read_reports(conn, customer_id, start, end)


def read_reports(
    conn: psycopg.Connection, customer_id: int | None, start: datetime | None, end: datetime | None
) -> pl.DataFrame:
    """The four reports side by side: customer_id, hour, page_loads, clicks, unique_user_clicks,
    related_clicks, ctr."""
    (query,) = statements(sql_text("referral", "postgres_report.sql"))
    params = {"customer_id": customer_id, "from": start, "to": end}
    rows = conn.execute(query, params).fetchall()
    return pl.DataFrame(rows, schema={**dict(HOURLY_SCHEMA), "ctr": pl.Float64}, orient="row")


def replace_event_days(client: Client, store: Store, days: list[date], mixed_days: set[date], load_id: str) -> int:
    """Make each day of `referral_events` equal to the staged day (one copy per event); returns rows sent.

    A day whose parts all come from this load holds each event once, so its Parquet parts are sent as they
    are (ClickHouse reads Parquet natively; adpipe reads the bytes from the staging store, local or S3); a
    day in `mixed_days` (staged before, or with a copy replaced) is sent as the reports count it
    (`day_as_reported`: repeats dropped, also those of an earlier copy in the day before). Dropping the day's
    partition and inserting the staged day is idempotent, so a re-load, or a crash between the two
    statements, converges on the next load.
    """
    sent = 0
    for day in days:
        _drop_day(client, day)
        if day not in mixed_days:
            for path in day_parts(store, day):
                part = store.read_bytes(path)
                _insert_part(client, part, f"{load_id}:{path.name}")
                sent += pq.read_metadata(pa.BufferReader(part)).num_rows
            continue
        events = day_as_reported(store, day).select(EVENT_SCHEMA.names())
        if not events.is_empty():
            client.insert_arrow(
                EVENTS_TABLE,
                events.with_columns(pl.col("fired_at").dt.replace_time_zone("UTC")).to_arrow(),
                settings={"insert_deduplication_token": f"{EVENTS_TABLE}:{load_id}:{day.isoformat()}"},
            )
            sent += len(events)
    return sent


MIRROR_BACKLOG = 2
"""Parts staged but not yet inserted by EventMirror, at most (each a few MB)."""


class EventMirror:
    """Copies the parts a load stages into `referral_events` while the load goes on (one background thread),
    so ClickHouse ingests them while the next chunks are read and cleaned instead of after the last one.

    Only days that nothing had staged before the file are mirrored: the first part of such a day drops its
    partition and each part adds to it, so at the end the day holds exactly its staged parts, as
    `replace_event_days` would have made it. A day that gets a part the mirror does not send (a later file of
    the load staging into a day an earlier one did) is left unfinished, for `replace_event_days`. At most
    MIRROR_BACKLOG parts wait, so memory stays bounded when ClickHouse is the slower side.
    """

    def __init__(self, client: Client, load_id: str) -> None:
        self.client = client
        self.load_id = load_id
        self.rows = 0
        self.seconds = 0.0
        """Time spent inserting, overlapped with the load's other work."""
        self.unfinished: set[date] = set()
        self._dropped: set[date] = set()
        self._worker = Worker("adpipe-mirror", MIRROR_BACKLOG)

    def __enter__(self) -> EventMirror:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # On failure: do not start what still waits, let the running insert end (the day is redone next load).
        self._worker.close()

    def send(self, part: StagedPart) -> None:
        self._worker.submit(self._insert, part)

    def skip(self, day: date) -> None:
        """`day` got a part this mirror did not send: `replace_event_days` must redo it."""
        self.unfinished.add(day)

    def finish(self) -> set[date]:
        """Wait for every insert; returns the days that `referral_events` now holds exactly as staged."""
        self._worker.wait()
        return self._dropped - self.unfinished

    def _insert(self, part: StagedPart) -> None:
        began = time.perf_counter()
        if part.day not in self._dropped:
            _drop_day(self.client, part.day)
            self._dropped.add(part.day)
        _insert_part(self.client, part.data, f"{self.load_id}:mirror:{part.path.name}")
        self.rows += part.rows
        self.seconds += time.perf_counter() - began


def _drop_day(client: Client, day: date) -> None:
    client.command(f"ALTER TABLE {EVENTS_TABLE} DROP PARTITION %(day)s", parameters={"day": day.isoformat()})


def _insert_part(client: Client, parquet: bytes, token: str) -> None:
    """Insert a staged part's Parquet bytes. The token is unique to the load (and to the phase of it that sends
    the part): clickhouse-connect resends an insert whose connection broke after the server ran it, and the
    table drops that second copy, while a later load's insert of the same part (after its DROP PARTITION)
    lands."""
    settings = {"insert_deduplication_token": f"{EVENTS_TABLE}:{token}"}
    client.raw_insert(EVENTS_TABLE, insert_block=parquet, fmt="Parquet", settings=settings)


def warehouse_hourly_reports(client: Client, window: timedelta) -> pl.DataFrame:
    """The same reports computed by ClickHouse SQL over `referral_events` (HOURLY_SCHEMA), to reconcile."""
    (query,) = statements(sql_text("referral", "clickhouse_hourly_reports.sql"))
    parameters = {"window": int(window.total_seconds()), "horizon": int(HORIZON.total_seconds())}
    table = client.query_arrow(query, parameters=parameters)
    frame = pl.from_arrow(table)
    # A DateTime column arrives as seconds since the epoch (UInt32).
    return frame.with_columns(pl.from_epoch(pl.col("hour").cast(pl.Int64), time_unit="s")).cast(dict(HOURLY_SCHEMA))
