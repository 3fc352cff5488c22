"""The warehouse: one clickhouse-connect `Client` for the embedded engine (chdb://) and for servers (http://).

chDB runs ClickHouse inside this process and allows one data directory per process, and one
process per data directory. We hold a file lock beside the data for as long as the client is
open, so a second adpipe process gets a clear "busy" message instead of an engine error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from pipeline.config import Settings, mask_url
from pipeline.errors import AdpipeError
from pipeline.locks import acquire_lock

log = logging.getLogger(__name__)

# ClickHouse error codes that mean "your configuration is wrong", mapped to what to tell the user.
_CONFIG_ERRORS = {
    81: "unknown database",
    516: "wrong user name or password",
    192: "unknown user",
}

_open: dict[str, tuple[Client, int | None]] = {}
"""Open clients by URL and database, with the lock descriptor held for embedded engines."""


def connect(settings: Settings, *, create_database: bool = True) -> Client:
    """The client for the configured warehouse, opened once per process.

    With `create_database`, the adpipe database is created if missing (a read-only user passes False).
    """
    key = f"{settings.clickhouse_url}#{settings.clickhouse_database}"
    if key in _open:
        return _open[key][0]
    if settings.clickhouse_is_embedded:
        # chDB serves one data directory per process: release any other before opening this one.
        close_all()
    lock_fd = _lock_embedded(settings) if settings.clickhouse_is_embedded else None
    try:
        client = _open_client(settings, create_database)
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    _open[key] = (client, lock_fd)
    return client


def close_all() -> None:
    """Close every open client and release the embedded engine's lock."""
    while _open:
        _, (client, lock_fd) = _open.popitem()
        client.close()
        if lock_fd is not None:
            os.close(lock_fd)


def _lock_embedded(settings: Settings) -> int:
    path = Path(settings.clickhouse_url.removeprefix("chdb://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return acquire_lock(path.parent / f"{path.name}.lock", f"embedded ClickHouse at {path}")


def _open_client(settings: Settings, create_database: bool) -> Client:
    url, database = settings.clickhouse_url, settings.clickhouse_database
    try:
        timeouts = {} if settings.clickhouse_is_embedded else {"connect_timeout": 10, "send_receive_timeout": 300}
        client = clickhouse_connect.get_client(
            dsn=url, database="default" if create_database else database, **timeouts
        )
        if create_database:
            client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
            client.database = database
    except ClickHouseError as exc:
        raise AdpipeError(describe_error(exc, url)) from None
    log.info("connected to ClickHouse %s, database %s", mask_url(url), database)
    return client


def describe_error(exc: ClickHouseError, url: str) -> str:
    """One line saying what went wrong talking to ClickHouse, with secrets masked."""
    code = getattr(exc, "code", None)
    if isinstance(exc, OperationalError) and code is None:
        return f"cannot reach ClickHouse at {mask_url(url)}: {_first_line(exc)}"
    if isinstance(exc, DatabaseError) and code in _CONFIG_ERRORS:
        return f"ClickHouse at {mask_url(url)}: {_CONFIG_ERRORS[code]} ({_first_line(exc)})"
    return f"ClickHouse error at {mask_url(url)}: {_first_line(exc)}"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def quote_identifier(name: str) -> str:
    """A ClickHouse identifier in backquotes, safe whatever it contains."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
