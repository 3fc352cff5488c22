"""Reading the source tables into Arrow, all reads of a run inside one REPEATABLE READ snapshot.

A coordinator connection opens the transaction and exports its snapshot; every reader
connection (ConnectorX's parallel partitions, or ADBC) imports it with SET TRANSACTION SNAPSHOT,
so the four tables a run reads agree with each other exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import psycopg
import pyarrow as pa

from pipeline.config import Settings
from pipeline.options import Engine
from pipeline.postgres import connect, postgres_url

log = logging.getLogger(__name__)

SOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "advertiser": ("id", "name", "updated_at", "created_at"),
    "campaign": ("id", "name", "bid", "budget", "start_date", "end_date", "advertiser_id", "updated_at", "created_at"),
    "impressions": ("id", "campaign_id", "created_at"),
    "clicks": ("id", "campaign_id", "created_at"),
}
DIMENSIONS = ("advertiser", "campaign")
FACTS = ("impressions", "clicks")


@dataclass(frozen=True)
class Snapshot:
    """The source snapshot a run reads: pg_current_snapshot() parts and the transaction's start time (UTC)."""

    exported_id: str
    xmin: int
    xmax: int
    xip: tuple[int, ...]
    taken_at: datetime

    @property
    def text(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(map(str, self.xip))}"


class SourceReader:
    """One run's view of the source. Use as a context manager; reads share the coordinator's snapshot."""

    def __init__(self, settings: Settings, engine: Engine = Engine.ADBC, partitions: int = 2) -> None:
        self.settings = settings
        self.engine = engine
        self.partitions = partitions
        self.url = postgres_url(settings)
        self._coordinator: psycopg.Connection | None = None
        self._adbc: list = []  # one ADBC connection per partition, opened on first use
        self._pool: ThreadPoolExecutor | None = None
        self.snapshot: Snapshot

    def __enter__(self) -> SourceReader:
        conn = connect(self.settings)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        exported, current, taken_at = conn.execute(
            "SELECT pg_export_snapshot(), pg_current_snapshot()::text, now() AT TIME ZONE 'UTC'"
        ).fetchone()
        xmin, xmax, xip = current.split(":")
        self.snapshot = Snapshot(exported, int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x), taken_at)
        self._coordinator = conn
        log.info("reading source snapshot %s", self.snapshot.text)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for conn in self._adbc:
            conn.close()
        if self._pool is not None:
            self._pool.shutdown()
        if self._coordinator is not None:
            self._coordinator.rollback()
            self._coordinator.close()

    @property
    def coordinator(self) -> psycopg.Connection:
        assert self._coordinator is not None, "SourceReader used outside its context"
        return self._coordinator

    def max_id(self, table: str) -> int:
        return self.coordinator.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]

    def created_at_of(self, table: str, row_id: int) -> datetime | None:
        row = self.coordinator.execute(f"SELECT created_at FROM {table} WHERE id = %s", (row_id,)).fetchone()
        return row[0] if row else None

    def read_all(self, table: str) -> pa.Table:
        """A whole (small) table: the dimensions."""
        return self._read(table, [f"SELECT {_columns(table)} FROM {table} ORDER BY id"])

    def read_id_range(self, table: str, after: int, upto: int, chunk_rows: int) -> Iterator[tuple[int, int, pa.Table]]:
        """Rows with after < id <= upto, in chunks of `chunk_rows` ids, each read in parallel partitions.

        Yields (chunk_after, chunk_upto, rows) so callers know exactly which ids each chunk covered.
        """
        low = after
        while low < upto:
            high = min(low + chunk_rows, upto)
            yield low, high, self._read(table, _partition_queries(table, low, high, self._partitions_for(high - low)))
            low = high

    def read_ids_in(self, table: str, ranges: list[tuple[int, int]]) -> pa.Table:
        """Rows whose id lies in any of the inclusive `ranges`: the re-check of earlier gaps (usually few)."""
        # The bounds come from our own state file and are forced to int: nothing user-typed reaches the SQL.
        condition = " OR ".join(f"id BETWEEN {int(lo)} AND {int(hi)}" for lo, hi in ranges) or "false"
        return self._read(table, [f"SELECT {_columns(table)} FROM {table} WHERE {condition} ORDER BY id"])

    def _partitions_for(self, ids: int) -> int:
        # Parallel partitions only pay for large chunks; small ones would just open connections.
        return self.partitions if ids >= 200_000 else 1

    def _read(self, table: str, queries: list[str]) -> pa.Table:
        result = self._read_adbc(queries) if self.engine is Engine.ADBC else self._read_connectorx(queries)
        return _plain_types(result)

    def _read_connectorx(self, queries: list[str]) -> pa.Table:
        import connectorx

        attach = [
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            f"SET TRANSACTION SNAPSHOT '{self.snapshot.exported_id}'",
        ]
        return connectorx.read_sql(self.url, queries, return_type="arrow", pre_execution_query=attach)

    def _read_adbc(self, queries: list[str]) -> pa.Table:
        """Each query on its own connection, in parallel threads (ADBC releases the GIL while fetching)."""
        while len(self._adbc) < len(queries):
            self._adbc.append(self._open_adbc())
        if len(queries) == 1:
            return _fetch_adbc(self._adbc[0], queries[0])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.partitions)
        return pa.concat_tables(self._pool.map(_fetch_adbc, self._adbc, queries))

    def _open_adbc(self) -> Any:
        import adbc_driver_postgresql.dbapi as adbc

        conn = adbc.connect(self.url, autocommit=True)
        with conn.cursor() as cursor:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor.execute(f"SET TRANSACTION SNAPSHOT '{self.snapshot.exported_id}'")
        return conn


def _fetch_adbc(conn: Any, query: str) -> pa.Table:
    with conn.cursor() as cursor:
        cursor.execute(query)
        return cursor.fetch_arrow_table()


def _columns(table: str) -> str:
    return ", ".join(SOURCE_COLUMNS[table])


def _partition_queries(table: str, after: int, upto: int, partitions: int) -> list[str]:
    """Split (after, upto] into `partitions` id ranges; ConnectorX reads a list of queries in parallel, in order."""
    step = -(-(upto - after) // partitions)
    bounds = [(lo, min(lo + step, upto)) for lo in range(after, upto, step)]
    return [f"SELECT {_columns(table)} FROM {table} WHERE id > {lo} AND id <= {hi} ORDER BY id" for lo, hi in bounds]


def _plain_types(table: pa.Table) -> pa.Table:
    """Drop driver metadata and unwrap extension types (ADBC delivers NUMERIC as an opaque string)."""
    fields, columns = [], []
    for f, column in zip(table.schema, table.columns, strict=True):
        if isinstance(f.type, pa.ExtensionType) or hasattr(f.type, "storage_type"):
            column = pa.chunked_array([chunk.storage for chunk in column.chunks], type=f.type.storage_type)
        fields.append(pa.field(f.name, column.type))
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))
