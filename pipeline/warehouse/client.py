"""The warehouse: one clickhouse-connect `Client` for the embedded engine (chdb://) and for servers (http://).

chDB runs ClickHouse inside this process and allows one data directory per process, and one
process per data directory. We hold a file lock beside the data for as long as the client is
open, so a second adpipe process gets a clear "busy" message instead of an engine error.
A long-running holder (`sync --follow`) lends the engine instead (`lend_engine`): other commands
then wait for it, and it hands the engine over between runs.

A server client gets timeouts, TLS options and compression from `Settings.clickhouse_server`, and
retries transient failures with exponential backoff. Every request's failure becomes a
`WarehouseError` naming the URL it was sent to. Retries wrap the client's few request methods
(every public call goes through exactly one of them) rather than use the driver's hooks: urllib3's
Retry (`http_retries`) sees an HTTP status but neither ClickHouse's error code nor the statement,
and clickhouse-connect's `query_retries` covers only reads answered 429/503/504. The decision needs
all three: the error code, whether the request reached the server, and whether the statement is
safe to run twice.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ProtocolError, ReadTimeoutError, SSLError

from pipeline.config import ClickHouseServerOptions, Settings, mask_url
from pipeline.errors import AdpipeError, BusyError, MissingDatabaseError, WarehouseError, first_line
from pipeline.locks import acquire_lock, exclusive_lock, is_locked, shared_lock

log = logging.getLogger(__name__)

# ClickHouse error codes that mean "your configuration is wrong", mapped to what to tell the user.
_CONFIG_ERRORS = {
    81: "unknown database",
    192: "wrong user name or password",  # UNKNOWN_USER
    193: "wrong user name or password",  # WRONG_PASSWORD
    194: "a password is required",  # REQUIRED_PASSWORD
    497: "the user lacks a permission adpipe needs",  # ACCESS_DENIED
    516: "wrong user name or password",  # AUTHENTICATION_FAILED
}

_TRANSIENT_CODES = {
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    203: "NO_FREE_CONNECTION",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    225: "NO_ZOOKEEPER",
    242: "TABLE_IS_READ_ONLY",
    252: "TOO_MANY_PARTS",
    279: "ALL_CONNECTION_TRIES_FAILED",
    285: "TOO_FEW_LIVE_REPLICAS",
    373: "SESSION_IS_LOCKED",
    439: "CANNOT_SCHEDULE_TASK",
    473: "DEADLOCK_AVOIDED",
    745: "SERVER_OVERLOADED",
    999: "KEEPER_EXCEPTION",
}
"""ClickHouse error codes that mean "not now": the server refused the statement, which did not run, and the
same statement can succeed moments later. Every other code (a syntax error, an unknown table, a type
mismatch, bad credentials…) fails at once: sending the statement again cannot change the answer."""

_SAFE_TWICE = re.compile(
    r"\s*(?:SELECT|WITH|EXISTS|SHOW|DESCRIBE|DESC|EXPLAIN|CREATE\s+OR\s+REPLACE"
    r"|(?:CREATE|ATTACH)\s[^(]*?\bIF\s+NOT\s+EXISTS|DROP\s[^(]*?\bIF\s+EXISTS"
    r"|ALTER\s+TABLE\s+\S+\s+DROP\s+PARTITION)\b",
    re.IGNORECASE,
)
"""Statements whose second run changes nothing, so they may be resent when a failure leaves unknown
whether the first one ran. Notably not EXCHANGE TABLES: a second run would swap the tables back."""

_DEDUPLICATED = "insert_deduplication_token"

_MAX_RETRY_DELAY = 30.0
"""Seconds: the backoff doubles up to this, however many retries are configured."""

_HTTP_STATUS = re.compile(r"HTTP driver received HTTP status (\d{3})")
"""How clickhouse-connect words an HTTP error that carries no ClickHouse error code."""


_ENGINE_OPTIONS = {
    # The engine's background work (merges, mutations, removing replaced parts) sleeps after each look that finds
    # nothing to start, by default 0.1 s plus a random part of up to 1 s. A server runs for days and does not mind;
    # an adpipe process lives for seconds, and a run that waits for a mutation (after its deletes, in
    # pipeline.sync.load) waited up to that long for one whose work takes under a tenth of a second.
    "background_processing_pool_task_sleep_seconds_when_no_work_random_part": 0,
    "background_processing_pool_thread_sleep_seconds_if_nothing_to_do": 0.01,
}

_open: dict[str, tuple[Client, int | None]] = {}
"""Open clients by URL, with the lock descriptor held for an embedded engine."""


def connect(settings: Settings, *, create_database: bool = True) -> Client:
    """The client for the configured warehouse, opened once per process, using the adpipe database.

    With `create_database`, the database is created if missing (a read-only user passes False).
    """
    url, database = settings.clickhouse_url, settings.clickhouse_database
    if url not in _open:
        if settings.clickhouse_is_embedded:
            # chDB serves one data directory per process: release any other before opening this one.
            close_all()
        lock_fd = _lock_embedded(settings) if settings.clickhouse_is_embedded else None
        try:
            _open[url] = (_open_client(settings), lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
    client = _open[url][0]
    if client.database != database:
        # Not in the current database's context: a server resolves it on every request, and it may be gone.
        if create_database:
            client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}", use_database=False)
        elif not client.command(f"EXISTS DATABASE {quote_identifier(database)}", use_database=False):
            # Checked before switching: a client set to a missing database fails every later query.
            raise MissingDatabaseError(f"ClickHouse at {mask_url(url)}: unknown database {database}", url=mask_url(url))
        client.database = database
    return client


def connect_another(settings: Settings) -> Client:
    """A second client on the warehouse `connect` has open in this process, for work running beside the first
    client's (a full run loads its parts two at a time). A chDB engine serves several connections on the data
    directory its process holds, as a server does. The caller closes it."""
    if settings.clickhouse_url not in _open:
        raise AssertionError("connect_another() before connect()")
    client = _open_client(settings)
    client.database = settings.clickhouse_database
    return client


def is_embedded(client: Client) -> bool:
    """Whether `client` drives the embedded engine in this process rather than a server."""
    return client.uri.startswith("chdb://")


def close_all() -> None:
    """Close every open client and release the embedded engine's lock."""
    while _open:
        _, (client, lock_fd) = _open.popitem()
        client.close()
        if lock_fd is not None:
            os.close(lock_fd)


def _engine_file(settings: Settings, suffix: str) -> Path:
    """A lock file beside the embedded engine's data: `.lock` (its holder), `.lender` (held by a process that hands
    the engine over on request), `.wanted` (shared by the processes waiting for it)."""
    path = _engine_directory(settings)
    return path.parent / f"{path.name}{suffix}"


def _engine_directory(settings: Settings) -> Path:
    """The embedded engine's data directory, links resolved: two spellings of one directory share its locks."""
    return Path(settings.clickhouse_url.removeprefix("chdb://")).resolve()


def _lock_embedded(settings: Settings) -> int:
    what = f"embedded ClickHouse at {settings.clickhouse_url.removeprefix('chdb://')}"
    try:
        return acquire_lock(_engine_file(settings, ".lock"), what)
    except BusyError:
        if not is_locked(_engine_file(settings, ".lender")):
            raise
    log.info("the embedded ClickHouse is lent by a follower: waiting for it to hand it over")
    with shared_lock(_engine_file(settings, ".wanted")):
        return acquire_lock(_engine_file(settings, ".lock"), what, wait_seconds=settings.engine_wait_seconds)


@contextmanager
def lend_engine(settings: Settings) -> Iterator[Callable[[], bool]]:
    """For a long-running process: while the block runs, other processes that find the embedded engine busy wait
    for it (up to `engine_wait_seconds`) instead of failing at once. Yields `hand_over()`, to call between pieces
    of work: it closes the engine when someone waits for it, and says whether it did; the next `connect` takes it
    back, waiting its turn. A server needs none of this: the block runs unchanged.
    """
    if not settings.clickhouse_is_embedded:
        yield lambda: False
        return
    with exclusive_lock(_engine_file(settings, ".lender"), "sync --follow"):
        yield lambda: _hand_over(settings)


def _hand_over(settings: Settings) -> bool:
    if settings.clickhouse_url not in _open or not is_locked(_engine_file(settings, ".wanted")):
        return False
    log.info("handing the embedded ClickHouse over to a waiting process")
    close_all()
    return True


def _open_client(settings: Settings) -> Client:
    url, options = settings.clickhouse_url, settings.clickhouse_server
    engine_said: list[str] = []
    try:
        if settings.clickhouse_is_embedded:
            with _engine_output_held(engine_said):
                client = clickhouse_connect.get_client(dsn=url, database="default", chdb_options=_ENGINE_OPTIONS)
        else:
            arguments = _server_arguments(url, options)
            client = _retrying(lambda: clickhouse_connect.get_client(dsn=url, **arguments), options, url)
    except ClickHouseError as exc:
        if settings.clickhouse_is_embedded:
            raise _engine_error(settings, exc, engine_said) from exc
        raise warehouse_error(exc, url, options) from exc
    _wrap_requests(client, None if settings.clickhouse_is_embedded else options, url)
    log.info("connected to ClickHouse %s", mask_url(url))
    return client


@contextmanager
def _engine_output_held(engine_said: list[str]) -> Iterator[None]:
    """chDB writes why an engine did not start to the process's stderr itself (`Code: 76. DB::Exception: Cannot lock
    file …`), and raises only that it did not start. So stderr is held back while the engine opens: passed on if it
    opens, else its lines go to `engine_said` for adpipe's one line (`_engine_error`)."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        stderr = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            engine_said.extend(line for line in _stderr_back(held, stderr).splitlines() if line.strip())
            raise
        sys.stderr.write(_stderr_back(held, stderr))


def _stderr_back(held: IO[bytes], stderr: int) -> str:
    """Put the process's stderr back (`stderr`, a duplicate of it), and return what `held` took meanwhile."""
    os.dup2(stderr, 2)
    os.close(stderr)
    held.seek(0)
    return held.read().decode(errors="replace")


def _engine_error(settings: Settings, exc: ClickHouseError, engine_said: list[str]) -> AdpipeError:
    """An embedded engine that did not open, in one line: busy when another process holds its directory (chDB's own
    lock), else the engine's own reason."""
    directory = _engine_directory(settings)
    if is_locked(directory / "status"):
        return BusyError(
            f"embedded ClickHouse at {directory} is busy: another process holds its data directory (a program other"
            " than adpipe, or an adpipe whose ADPIPE_HOME is elsewhere)",
            path=str(directory),
            holder="unknown",
        )
    reasons = [line for line in engine_said if "Exception" in line]
    if not reasons:
        return warehouse_error(exc, settings.clickhouse_url, None)
    return WarehouseError(
        f"embedded ClickHouse at {directory} did not start: {reasons[-1].strip()}",
        url=mask_url(settings.clickhouse_url),
        transient=False,
        code=getattr(exc, "code", None),
    )


def _server_arguments(url: str, options: ClickHouseServerOptions) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "database": "default",
        "connect_timeout": options.connect_timeout,
        "send_receive_timeout": options.read_timeout,
        # Compressed responses (and Arrow inserts). Parquet parts are zstd inside, so they are sent as they are.
        "compress": True,
        # adpipe keeps no session state; without a session id a retried request never meets its own session lock.
        "autogenerate_session_id": False,
        # One retry policy, ours: the driver's own status retries would multiply our attempts and skip the backoff.
        "query_retries": 0,
    }
    if urlsplit(url).scheme == "https" or urlsplit(url).port in (443, 8443):
        # clickhouse-connect ignores the DSN's scheme (it uses TLS on ports 443/8443 only): https:// means TLS.
        arguments["interface"] = "https"
        arguments["verify"] = options.verify
        for name, value in (
            ("ca_cert", options.ca_cert),
            ("client_cert", options.client_cert),
            ("client_cert_key", options.client_key),
        ):
            if value is not None:
                arguments[name] = value
    return arguments


class _Failure(Enum):
    DID_NOT_RUN = "did not run"  # never reached the server, or the server (or a proxy: 429, 503) refused it for now
    MAY_HAVE_RUN = "may have run"  # the connection broke, or a proxy answered 500/502/504, after the request was sent
    FINAL = "final"  # a bad query, bad credentials, TLS, a read timeout: sending it again cannot help


def _failure(exc: ClickHouseError) -> _Failure:
    code = getattr(exc, "code", None)
    if code is not None:
        return _Failure.DID_NOT_RUN if code in _TRANSIENT_CODES else _Failure.FINAL
    cause = _transport_cause(exc)
    status = _HTTP_STATUS.search(str(exc))  # an HTTP error without a ClickHouse error: from a proxy or balancer
    if isinstance(cause, ConnectTimeoutError) or (status and int(status[1]) in (429, 503)):
        # Refused, unreachable, unknown host (NewConnectionError is a ConnectTimeoutError); or "try later".
        return _Failure.DID_NOT_RUN
    if isinstance(cause, ProtocolError) or (status and int(status[1]) >= 500):
        return _Failure.MAY_HAVE_RUN
    return _Failure.FINAL


def _transport_cause(exc: BaseException) -> BaseException | None:
    """The urllib3 error behind a driver error (clickhouse-connect raises `from` it), unwrapped from MaxRetryError."""
    cause = exc.__cause__
    return cause.reason if isinstance(cause, MaxRetryError) else cause


def _retrying[T](call: Callable[[], T], options: ClickHouseServerOptions, url: str, *, safe_twice: bool = True) -> T:
    """`call()`, again after a transient failure, waiting retry_delay, then twice as long each time.

    A failure that leaves unknown whether the statement ran is retried only when `safe_twice`.
    """
    attempt = 0
    while True:
        try:
            return call()
        except ClickHouseError as exc:
            failure = _failure(exc)
            retryable = failure is _Failure.DID_NOT_RUN or (failure is _Failure.MAY_HAVE_RUN and safe_twice)
            if not retryable or attempt >= options.retries:
                raise
            delay = min(options.retry_delay * 2**attempt, _MAX_RETRY_DELAY)
            attempt += 1
            log.warning(
                "ClickHouse at %s: %s; retry %d of %d in %.2f s",
                mask_url(url),
                _reason(exc),
                attempt,
                options.retries,
                delay,
            )
            time.sleep(delay)


def _deduplicated(settings: dict | None) -> bool:
    # Every insert adpipe retries carries an insert_deduplication_token (pipeline.sync.load: `<table>:<run>:<sha256>`
    # of the staged part), and the tables keep a deduplication window: a part resent after a connection broke mid-insert
    # is dropped by the table and by the materialized views, so a retry never doubles rows. An insert without a
    # token is resent only when it certainly did not run.
    return _DEDUPLICATED in (settings or {})


_REQUEST_METHODS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "_query_with_context": lambda a: True,  # query(), query_df()…: reads
    "raw_query": lambda a: bool(_SAFE_TWICE.match(a["query"])),  # query_arrow()
    "raw_stream": lambda a: bool(_SAFE_TWICE.match(a["query"])),
    # INSERT … SELECT FROM s3() of a staged part carries a token like raw_insert (pipeline.sync.load).
    "command": lambda a: (
        (bool(_SAFE_TWICE.match(a["cmd"])) and a.get("data") is None) or _deduplicated(a.get("settings"))
    ),
    "raw_insert": lambda a: _deduplicated(a.get("settings")),  # insert_arrow() and Parquet parts
    "data_insert": lambda a: _deduplicated(a["context"].settings),  # insert()
}
"""The client methods that send requests, and whether a call is safe to run twice, from its arguments."""


def _wrap_requests(client: Client, options: ClickHouseServerOptions | None, url: str) -> None:
    """Make each request the client sends retry transient failures (a server: `options`) and fail as a
    WarehouseError naming `url`, through the methods that send them.

    Every public call (query, query_arrow, command, insert, insert_arrow…) reaches the server through exactly
    one of these, so a request is retried, and its error translated, at one level only.
    """
    for name, safe_twice in _REQUEST_METHODS.items():
        setattr(client, name, _wrapped(getattr(client, name), safe_twice, options, url))


def _wrapped(
    method: Callable[..., Any],
    safe_twice: Callable[[dict[str, Any]], bool],
    options: ClickHouseServerOptions | None,
    url: str,
) -> Callable[..., Any]:
    signature = inspect.signature(method)

    @wraps(method)
    def request(*args: Any, **kwargs: Any) -> Any:
        try:
            if options is None:
                return method(*args, **kwargs)
            safe = safe_twice(signature.bind(*args, **kwargs).arguments)
            return _retrying(lambda: method(*args, **kwargs), options, url, safe_twice=safe)
        except ClickHouseError as exc:
            raise warehouse_error(exc, url, options) from exc

    return request


def warehouse_error(exc: ClickHouseError, url: str, options: ClickHouseServerOptions | None) -> WarehouseError:
    """The driver's error as a WarehouseError: one line, the masked URL, the code, and whether it is transient."""
    code = getattr(exc, "code", None)
    # A read timeout is not sent again (the statement may still be running), but a later run may well get its
    # answer in time: a follower retries the run rather than stopping for good on one slow answer.
    transient = _failure(exc) is not _Failure.FINAL or isinstance(_transport_cause(exc), ReadTimeoutError)
    return WarehouseError(describe_error(exc, url, options), url=mask_url(url), transient=transient, code=code)


def describe_error(exc: ClickHouseError, url: str, options: ClickHouseServerOptions | None = None) -> str:
    """One line saying what went wrong talking to ClickHouse, with secrets masked."""
    code = getattr(exc, "code", None)
    where = mask_url(url)
    if isinstance(exc, OperationalError) and code is None:
        cause = _transport_cause(exc)
        if isinstance(cause, ReadTimeoutError):
            timeout = f" within {options.read_timeout:g} s" if options is not None else ""
            return f"ClickHouse at {where} did not answer{timeout} (ADPIPE_CLICKHOUSE_READ_TIMEOUT)"
        if isinstance(cause, SSLError):
            return (
                f"TLS with ClickHouse at {where} failed: {first_line(cause)} "
                "(see ADPIPE_CLICKHOUSE_CA_CERT, ADPIPE_CLICKHOUSE_VERIFY)"
            )
        return f"cannot reach ClickHouse at {where}: {_reason(exc)}"
    if isinstance(exc, DatabaseError) and code in _CONFIG_ERRORS:
        return f"ClickHouse at {where}: {_CONFIG_ERRORS[code]} ({_server_message(exc)})"
    return f"ClickHouse error at {where}: {_server_message(exc)}"


def _reason(exc: ClickHouseError) -> str:
    """What failed, in a few words: the server's message, or the network error behind the driver's."""
    cause = _transport_cause(exc)
    return first_line(cause) if getattr(exc, "code", None) is None and cause is not None else _server_message(exc)


def _server_message(exc: ClickHouseError) -> str:
    """The server's own words (`Code: 60. DB::Exception: …`), without the driver's wrapping and the version."""
    text = first_line(exc, limit=1000)
    text = text.split("server response: ", 1)[-1]
    text = re.sub(r"\s*\(for url [^)]*\)$", "", text)
    text = re.sub(r"\s*\(version [^)]*(?:\([^)]*\))?\)$", "", text)
    return text[:300]


def quote_identifier(name: str) -> str:
    """A ClickHouse identifier in backquotes, safe whatever it contains."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
