"""Reading the source tables into Arrow, all reads of a run inside one REPEATABLE READ snapshot.

A coordinator connection opens the transaction and exports its snapshot; every reader
connection (ConnectorX's parallel partitions, or ADBC) imports it with SET TRANSACTION SNAPSHOT,
so the four tables a run reads agree with each other exactly.

With `ADPIPE_POSTGRES_REPLICA_URL` set, all of it — coordinator and readers — runs on that hot
standby: the exported snapshot exists only on the server that exported it, so every read of a run
sees the same standby snapshot, i.e. the primary's state as of one WAL replay position. A standby
builds its snapshots from the transaction ids it has seen in the WAL (KnownAssignedXids), in the
primary's transaction-id space, so xmin means there what it means on the primary and the
incremental sync's gap bookkeeping holds unchanged, across runs on either server.

Right after taking the snapshot, a run also takes `Snapshot.xid_bound` from a primary — the server
read, or with a standby, the primary it replicates (`ADPIPE_POSTGRES_URL`): a standby cannot assign
transaction ids, and one taken on the primary after the standby snapshot is only larger, which is safe
(the standby's xmin reaches it only once it has replayed the end of every transaction below it).
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

import psycopg
import pyarrow as pa

from pipeline.catalog import FACTS, SOURCE_COLUMNS
from pipeline.config import Settings, mask_url
from pipeline.errors import SourceError
from pipeline.options import Engine
from pipeline.source.postgres import (
    ArrowConnection,
    check_source_columns,
    close_adbc,
    connect,
    connect_replica,
    next_transaction_id,
    open_adbc,
    postgres_url,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """The source snapshot a run reads, its start time (UTC), and a bound on the transactions before it."""

    exported_id: str
    text: str
    """pg_current_snapshot() as `xmin:xmax:xip`, for the manifest and logs. Its xmax is one past the latest
    *completed* transaction id: a transaction still running with a larger id is neither below it nor in xip,
    so xmax bounds nothing about running transactions (`xid_bound` does)."""
    xmin: int
    """Every transaction with a lower id had ended when the snapshot was taken, and what it committed is visible."""
    xid_bound: int
    """A transaction id above every one assigned before the snapshot: the primary's next id, taken just after."""
    taken_at: datetime
    lsn: str
    """The WAL position the snapshot is as of (at least): replayed up to, on a standby; written up to, on a primary."""


# The snapshot is taken when this first statement starts, so the position read during it is at or past the
# snapshot's. On a primary it is the WAL write position, an end of a record like the replay position a standby
# reports (the insert position can sit past a page header no replay position ever equals). pg_current_wal_lsn()
# fails during recovery: CASE evaluates it only on a primary.
_SNAPSHOT_SQL = """
SELECT pg_export_snapshot(), pg_current_snapshot()::text, now() AT TIME ZONE 'UTC',
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
    pg_is_in_recovery(), pg_last_xact_replay_timestamp()
"""


class SourceReader:
    """One run's view of the source. Use as a context manager; reads share the coordinator's snapshot."""

    def __init__(self, settings: Settings, engine: Engine = Engine.ADBC, partitions: int = 2) -> None:
        self.settings = settings
        self.engine = engine
        self.partitions = partitions
        self.replica = settings.postgres_replica_url is not None
        self.url = settings.postgres_replica_url or postgres_url(settings)
        self._coordinator: psycopg.Connection | None = None
        self._adbc: list[ArrowConnection] = []  # every ADBC connection opened, each in the snapshot
        self._idle: list[ArrowConnection] = []  # those no read is using
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._opening: Future[ArrowConnection] | None = None
        """The first ADBC connection, opened in the background as the snapshot is taken, for the first read."""
        self.snapshot: Snapshot

    def __enter__(self) -> SourceReader:
        conn = connect_replica(self.settings) if self.replica else connect(self.settings)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute(_LOCK_TIMEOUT)
        exported, current, taken_at, lsn, in_recovery, replayed_at = conn.execute(_SNAPSHOT_SQL).fetchone()
        try:
            check_source_columns(conn, self.url)
            xid_bound = self._xid_bound(in_recovery)
        except BaseException:
            conn.close()
            raise
        self.snapshot = Snapshot(exported, current, int(current.split(":")[0]), xid_bound, taken_at, lsn)
        self._coordinator = conn
        if self.engine is Engine.ADBC:
            # Opening one costs a round of the driver's catalog read, connect and snapshot import: done while the run
            # reads the replication slot, before its first read wants it (docs/performance.md, Change capture).
            self._pool = ThreadPoolExecutor(max_workers=self.partitions * _READS_AT_ONCE)
            self._opening = self._pool.submit(self._open_adbc)
        if in_recovery:
            log.info("reading standby snapshot %s as of %s (last commit %s)", self.snapshot.text, lsn, replayed_at)
        else:
            log.info("reading source snapshot %s at %s", self.snapshot.text, lsn)
        return self

    def _xid_bound(self, in_recovery: bool) -> int:
        """The next transaction id of the primary whose ids the snapshot just taken uses: the server read, or the
        primary of a standby. Called after the snapshot was taken, so it is above every id assigned before it."""
        if not in_recovery:
            return next_transaction_id(self.url, "the Postgres replica" if self.replica else "Postgres")
        try:
            return next_transaction_id(postgres_url(self.settings), "the primary Postgres")
        except SourceError as exc:
            raise SourceError(
                f"{exc}; a sync from a standby still takes one transaction id per run on the primary"
                " (ADPIPE_POSTGRES_URL), to know when rows missing below the last synced id can no longer appear",
                url=exc.url,
                transient=exc.transient,
            ) from None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._opening is not None:
            with suppress(Exception):  # an open that failed: no read took it, so its error is nobody's
                self._adbc.append(self._opening.result())
        for conn in self._adbc:
            close_adbc(self.url, conn)
        if self._pool is not None:
            self._pool.shutdown()
        ended: psycopg.Error | None = None
        if self._coordinator is not None:
            try:
                self._coordinator.rollback()
            except psycopg.Error as error:  # the server ended the session; on a standby, a recovery conflict
                ended = error
            self._coordinator.close()
        if exc is not None and self.replica and (conflict := _recovery_conflict(exc, ended)):
            raise SourceError(
                f"the Postgres replica at {mask_url(self.url)} cancelled this sync's reads (conflict with recovery"
                f"{_detail(conflict)}); nothing was committed: run the sync again, and if this keeps happening set"
                " hot_standby_feedback = on or raise max_standby_streaming_delay on the replica",
                url=mask_url(self.url),
                transient=True,
            ) from None
        if ended is not None and exc is None:
            raise ended

    def cancel(self) -> None:
        """Cancel what the reader's connections are running, from any thread: each read in progress raises.

        For a run that stops (an error, Ctrl-C) while its reads run in threads of their own, each of which would
        otherwise finish the chunk it is reading first, however long the server takes. ConnectorX's reads run on
        connections of its own, which this cannot reach.
        """
        with self._lock:
            running = [conn for conn in self._adbc if conn not in self._idle]
        cancels = [conn.cancel for conn in running]
        if self._coordinator is not None:
            cancels.append(lambda: self.coordinator.cancel_safe(timeout=_CANCEL_TIMEOUT))
        for cancel in cancels:
            try:
                cancel()
            except Exception:  # the drivers' own errors: a connection that cannot cancel is closed next anyway
                log.debug("could not cancel a read", exc_info=True)

    @property
    def coordinator(self) -> psycopg.Connection:
        assert self._coordinator is not None, "SourceReader used outside its context"
        return self._coordinator

    def max_id(self, table: str) -> int:
        return self.coordinator.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]

    def anchor_of(self, table: str, row_id: int) -> str | None:
        """The created_at of row `row_id` as ISO 8601 text, None without the row (or its time): what a later run
        compares to tell the same row from a new one under a reused id. A time before year 1 or an infinity, which
        Python cannot hold, is Postgres' own text."""
        row = self.coordinator.execute(
            f"SELECT to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US BC'), created_at::text FROM {table} WHERE id = %s",
            (row_id,),
        ).fetchone()
        if row is None or row[1] is None:
            return None
        text, shown = row  # text is None for an infinity, ends in " BC" before year 1
        if text is not None and text.endswith(" AD"):
            with suppress(ValueError):  # a year past 9999
                return datetime.fromisoformat(text.removesuffix(" AD")).isoformat()
        return shown

    def count_ids(self, table: str, upto: int, outside: list[tuple[int, int]]) -> int:
        """Rows with id <= upto, not counting those in the inclusive ranges `outside` (ranges from our own state)."""
        total = self.coordinator.execute(f"SELECT count(*) FROM {table} WHERE id <= %s", (upto,)).fetchone()[0]
        if not outside:
            return total
        condition = " OR ".join(f"id BETWEEN {int(lo)} AND {int(hi)}" for lo, hi in outside)
        return total - self.coordinator.execute(f"SELECT count(*) FROM {table} WHERE {condition}").fetchone()[0]

    def read_all(self, table: str) -> pa.Table:
        """A whole (small) table: the dimensions."""
        return self._read(table, [f"SELECT {_columns(table)} FROM {table} ORDER BY id"])

    def read_id_range(self, table: str, after: int, upto: int, chunk_rows: int) -> Iterator[tuple[int, int, pa.Table]]:
        """Rows with after < id <= upto, in chunks of at most `chunk_rows` rows, each read in parallel partitions.

        Chunks end at ids of the rows themselves (keyset), so their number follows the rows, never the id span:
        a jump between ids is no chunk at all. Yields (chunk_after, chunk_upto, rows), the exact ids each covered.
        """
        partitions = self._partitions_for(chunk_rows)
        # Rows of each partition: as equal as they can be, the last one read with LIMIT (it ends the chunk).
        ends = [-(-chunk_rows * k // partitions) for k in range(1, partitions + 1)]
        sizes = [end - start for start, end in itertools.pairwise([0, *ends])]
        low = after
        while low < upto:
            bounds = self._row_bounds(table, low, upto, sizes[:-1])
            queries = [_range_query(table, lo, hi) for lo, hi in itertools.pairwise([low, *bounds])]
            # The last partition ends the chunk with LIMIT; with fewer rows left than a chunk, it runs to `upto`.
            limit = sizes[-1] if len(bounds) == partitions - 1 else None
            queries.append(_range_query(table, bounds[-1] if bounds else low, upto, limit=limit))
            rows = self._read(table, queries)
            # A full chunk ends at its last id (its LIMIT was reached), a short one at `upto`.
            high = rows.column("id")[-1].as_py() if rows.num_rows == chunk_rows else upto
            yield low, high, rows
            low = high

    def _row_bounds(self, table: str, after: int, upto: int, sizes: list[int]) -> list[int]:
        """Ids splitting the rows after `after` into consecutive ranges of `sizes` rows each: the id that ends each
        range, found by an index-only OFFSET walk from the previous one. Fewer ids when fewer rows are left.

        Each walk starts where the last ended, so a chunk's partitions cost one walk of the primary key over all
        but its last partition's rows, which its own query ends with LIMIT (docs/performance.md).
        """
        bounds: list[int] = []
        for size in sizes:
            found = self.coordinator.execute(
                f"SELECT id FROM {table} WHERE id > %s AND id <= %s ORDER BY id OFFSET %s LIMIT 1",
                (bounds[-1] if bounds else after, upto, size - 1),
            ).fetchone()
            if found is None:
                break
            bounds.append(found[0])
        return bounds

    def read_ids_in(self, table: str, ranges: list[tuple[int, int]], *, below: int | None = None) -> pa.Table:
        """Rows whose id lies in any of the inclusive `ranges` (the re-check of earlier gaps, usually few), or is
        below `below` (ids the id sync never reaches, `catalog.FIRST_ID`: usually none, found by the index)."""
        # The bounds come from our own state file and catalog and are forced to int: nothing user-typed reaches the
        # SQL. An open lower bound, not a smallest integer: a literal beyond the column's type would compare as
        # numeric, and the index would not serve it.
        tests = [f"id BETWEEN {int(lo)} AND {int(hi)}" for lo, hi in ranges]
        condition = " OR ".join([*tests, *([] if below is None else [f"id < {int(below)}"])]) or "false"
        return self._read(table, [f"SELECT {_columns(table)} FROM {table} WHERE {condition} ORDER BY id"])

    def read_ids(self, table: str, ids: list[int]) -> pa.Table:
        """Rows with these ids, in id order: the rows change capture saw updated or deleted, read again."""
        batches = [sorted(ids)[start : start + _ID_BATCH] for start in range(0, len(ids), _ID_BATCH)] or [[]]
        # The ids come from the decoded WAL and are forced to int: nothing user-typed reaches the SQL.
        queries = [
            f"SELECT {_columns(table)} FROM {table} WHERE id IN ({', '.join(str(int(i)) for i in batch) or 'NULL'})"
            " ORDER BY id"
            for batch in batches
        ]
        return pa.concat_tables([self._read(table, [query]) for query in queries])

    def _partitions_for(self, rows: int) -> int:
        # Parallel partitions only pay for large chunks; small ones would just open connections.
        return self.partitions if rows >= 200_000 else 1

    def _read(self, table: str, queries: list[str]) -> pa.Table:
        result = self._read_adbc(queries) if self.engine is Engine.ADBC else self._read_connectorx(queries)
        return _plain_types(result)

    def _read_connectorx(self, queries: list[str]) -> pa.Table:
        import connectorx

        attach = [
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            f"SET TRANSACTION SNAPSHOT '{self.snapshot.exported_id}'",
            _LOCK_TIMEOUT,
        ]
        return connectorx.read_sql(self.url, queries, return_type="arrow", pre_execution_query=attach)

    def _read_adbc(self, queries: list[str]) -> pa.Table:
        """Each query on its own connection, in parallel threads (ADBC releases the GIL while fetching).

        Reads may run at the same time from several threads (the fact tables are read ahead side by side, while
        the dimensions are read): each takes connections no other read is using, opening more when none is idle.
        """
        conns = self._take_connections(len(queries))
        try:
            if len(queries) == 1:
                return conns[0].read_arrow(queries[0])
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=self.partitions * _READS_AT_ONCE)
            return pa.concat_tables(self._pool.map(ArrowConnection.read_arrow, conns, queries))
        finally:
            with self._lock:
                self._idle += conns

    def _take_connections(self, count: int) -> list[ArrowConnection]:
        with self._lock:
            taken, self._idle = self._idle[:count], self._idle[count:]
            opening = None
            if len(taken) < count:
                opening, self._opening = self._opening, None
        if opening is not None:
            conn = opening.result()  # the error of an open that failed is the first read's
            with self._lock:
                self._adbc.append(conn)
            taken.append(conn)
        while len(taken) < count:
            conn = self._open_adbc()
            with self._lock:
                self._adbc.append(conn)
            taken.append(conn)
        return taken

    def _open_adbc(self) -> ArrowConnection:
        conn = open_adbc(self.url)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute(f"SET TRANSACTION SNAPSHOT '{self.snapshot.exported_id}'")
        conn.execute(_LOCK_TIMEOUT)
        return conn


_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '10s'"
"""On every connection of a run, for its snapshot's transaction. A TRUNCATE (or an ALTER) of a source table waits
for the run's connections that hold the table; one of them that reaches the table after it queues behind it, and
the run's other connections wait for that one: neither side would ever go on. The connection that waits gives up
instead (SQLSTATE 55P03), the run fails as transient, and the next one sees what the TRUNCATE did."""

_READS_AT_ONCE = len(FACTS) + 1
"""Reads that may run at the same time: each fact table's, and one more (the dimensions, or rows read again)."""

_CANCEL_TIMEOUT = 5.0
"""Seconds to wait for the server to take a cancel request (sent on a connection of its own)."""

_ID_BATCH = 50_000
"""Ids per query of `read_ids`: the query text stays well under a megabyte."""


def _recovery_conflict(*errors: BaseException | None) -> BaseException | None:
    """The error that says a standby cancelled our reads to replay WAL, if any.

    Every driver words it differently around the server's message; psycopg also carries its SQLSTATE
    (40001, which a read-only transaction gets on a standby only from a recovery conflict). A reader
    may fail first with a consequence instead ("snapshot does not exist" once the coordinator was
    terminated), so the coordinator's own error is checked too.
    """
    for error in errors:
        if error is not None and (getattr(error, "sqlstate", None) == "40001" or _CONFLICT in str(error)):
            return error
    return None


_CONFLICT = "conflict with recovery"
_DETAIL = re.compile(r"DETAIL:\s+([^\n]+)")


def _detail(error: BaseException) -> str:
    """`: <the server's DETAIL line>` (which kind of conflict), or nothing."""
    found = _DETAIL.search(str(error))
    return f": {found.group(1).strip().rstrip('.')}" if found else ""


def _columns(table: str) -> str:
    return ", ".join(SOURCE_COLUMNS[table])


def _range_query(table: str, after: int, upto: int, limit: int | None = None) -> str:
    """The rows with after < id <= upto in id order (the first `limit` of them). The bounds are ints of our own."""
    query = f"SELECT {_columns(table)} FROM {table} WHERE id > {int(after)} AND id <= {int(upto)} ORDER BY id"
    return query if limit is None else f"{query} LIMIT {int(limit)}"


def _plain_types(table: pa.Table) -> pa.Table:
    """Drop driver metadata and unwrap extension types (ADBC delivers NUMERIC as an opaque string)."""
    fields, columns = [], []
    for f, column in zip(table.schema, table.columns, strict=True):
        if isinstance(f.type, pa.ExtensionType) or hasattr(f.type, "storage_type"):
            column = pa.chunked_array([chunk.storage for chunk in column.chunks], type=f.type.storage_type)
        fields.append(pa.field(f.name, column.type))
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))
