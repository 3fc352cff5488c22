"""The warehouse: one clickhouse-connect `Client` for the embedded engine (chdb://) and for servers (http://).

chDB runs ClickHouse inside this process and allows one data directory per process, and one
process per data directory. We hold a file lock beside the data for as long as the client is
open, so a second adpipe process gets a clear "busy" message instead of an engine error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from pipeline.config import Settings, mask_url
from pipeline.errors import AdpipeError, first_line
from pipeline.locks import acquire_lock

log = logging.getLogger(__name__)

# ClickHouse error codes that mean "your configuration is wrong", mapped to what to tell the user.
_CONFIG_ERRORS = {
    81: "unknown database",
    516: "wrong user name or password",
    192: "unknown user",
}


class MissingDatabaseError(AdpipeError):
    """The adpipe database is not there, and this caller may not create it (a read-only user)."""


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
        try:
            if create_database:
                client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
            elif not client.command(f"EXISTS DATABASE {quote_identifier(database)}"):
                # Checked before switching: a client set to a missing database fails every later query.
                raise MissingDatabaseError(f"ClickHouse at {mask_url(url)}: database {database!r} does not exist")
            client.database = database
        except ClickHouseError as exc:
            raise AdpipeError(describe_error(exc, url)) from None
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


def _open_client(settings: Settings) -> Client:
    url = settings.clickhouse_url
    options = {}
    if not settings.clickhouse_is_embedded:
        options = {"connect_timeout": 10, "send_receive_timeout": 300}
        if urlsplit(url).scheme == "https":
            # clickhouse-connect ignores the DSN's scheme (it uses TLS on ports 443/8443 only): https:// means TLS.
            options["interface"] = "https"
    try:
        client = clickhouse_connect.get_client(dsn=url, database="default", **options)
    except ClickHouseError as exc:
        raise AdpipeError(describe_error(exc, url)) from None
    log.info("connected to ClickHouse %s", mask_url(url))
    return client


def describe_error(exc: ClickHouseError, url: str) -> str:
    """One line saying what went wrong talking to ClickHouse, with secrets masked."""
    code = getattr(exc, "code", None)
    if isinstance(exc, OperationalError) and code is None:
        return f"cannot reach ClickHouse at {mask_url(url)}: {first_line(exc)}"
    if isinstance(exc, DatabaseError) and code in _CONFIG_ERRORS:
        return f"ClickHouse at {mask_url(url)}: {_CONFIG_ERRORS[code]} ({first_line(exc)})"
    return f"ClickHouse error at {mask_url(url)}: {first_line(exc)}"


def quote_identifier(name: str) -> str:
    """A ClickHouse identifier in backquotes, safe whatever it contains."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
