"""The exceptions adpipe raises for problems a user can act on. A leaf: it imports nothing of the project.

Each is raised where its context is known (the masked URL of the server that failed, the file, the option) and
carries that context; the CLI turns any of them into one `error:` line, with no traceback.
"""

from __future__ import annotations

import sys


class AdpipeError(Exception):
    """A problem the user can act on: bad input, an unreachable server, a busy lock.

    The message is shown as-is, on one line, without a traceback.
    """


class ConfigError(AdpipeError):
    """A setting (environment variable, `.env`) or command-line option with a value adpipe cannot use."""


class BusyError(AdpipeError):
    """Another adpipe process holds a resource this one needs (the sync lock, the embedded engine)."""

    def __init__(self, message: str, *, path: str, holder: str) -> None:
        super().__init__(message)
        self.path = path
        self.holder = holder


class ServerError(AdpipeError):
    """A database server failed or refused a request.

    `url` is the server's URL with its password masked; `transient` says whether the same request may succeed
    later unchanged (the server was unreachable or overloaded), as opposed to a bad query or bad credentials.
    """

    def __init__(self, message: str, *, url: str, transient: bool = False) -> None:
        super().__init__(message)
        self.url = url
        self.transient = transient


class SourceError(ServerError):
    """The source Postgres (or its replica) failed: unreachable, a missing table, a missing privilege."""


class ChangeCaptureError(AdpipeError):
    """The changes read from the source's replication slot are not what the `pgoutput` protocol says they are
    (cut short, an unknown message, a change to a table without an `id`). Peeking consumed nothing: the slot
    still holds them."""


class WarehouseError(ServerError):
    """ClickHouse failed a request; `code` is ClickHouse's error code when the server sent one."""

    def __init__(self, message: str, *, url: str, transient: bool = False, code: int | None = None) -> None:
        super().__init__(message, url=url, transient=transient)
        self.code = code


class MissingDatabaseError(WarehouseError):
    """The adpipe database is not there, and this caller may not create it (a read-only user)."""


class StagingError(AdpipeError):
    """The staging directory or bucket cannot be read or written, or a staged run is not what its manifest says.

    `transient`: storage that failed or could not be reached, which may answer later; not a bad setting (a prefix
    with wildcards, a bucket that does not exist).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class SyncRefusedError(AdpipeError):
    """The sync stopped before changing anything, because going on would make the warehouse wrong
    (the source was reset, the replica is behind the last run).

    `transient`: the condition may clear by itself (a replica catching up), as opposed to one that needs a person
    (a reset source, a lost slot).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def describe_failure(exc: BaseException) -> str | None:
    """One line for an expected failure (ours, a database connection that broke, or the file system's); None for a
    bug.

    A connection that breaks in the middle of a Postgres read surfaces as the driver's error (`_broken_connection`).
    """
    if isinstance(exc, AdpipeError):
        return str(exc)
    if _broken_connection(exc):
        return f"Postgres connection failed: {first_line(exc)}"
    if _lock_timeout(exc):
        return (
            "Postgres: another session holds a table the sync reads (a TRUNCATE or an ALTER TABLE, say), and the sync"
            " stopped waiting for it; the next sync reads it once that is done"
        )
    if _refused_privilege(exc):
        return f"Postgres refused: {first_line(exc)} (the grants each command needs: docs/operations.md#grants)"
    if isinstance(exc, OSError):  # the machine's: a directory that cannot be made, a full disk, a file in the way
        return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else first_line(exc)
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether the same sync may succeed later unchanged, so a follower retries it: a server that was unreachable or
    overloaded, a busy lock, staging storage that failed, a connection that broke, a replica still catching up, a
    source table another session held.
    Every other expected failure (bad settings, a reset source, a lost slot) needs a person."""
    if isinstance(exc, ServerError | SyncRefusedError | StagingError):
        return exc.transient
    if isinstance(exc, BusyError):
        return True
    if isinstance(exc, AdpipeError):
        return False
    return _broken_connection(exc) or _lock_timeout(exc)


def _broken_connection(exc: BaseException) -> bool:
    """A Postgres connection that failed or broke, in psycopg or in ADBC (the sync's reader). The drivers are looked
    up in `sys.modules` rather than imported: an exception of a driver that was never imported cannot be raised."""
    return any(
        driver is not None and isinstance(exc, driver.OperationalError)
        for driver in (sys.modules.get("psycopg"), sys.modules.get("adbc_driver_manager"))
    )


def _lock_timeout(exc: BaseException) -> bool:
    """A read that gave up waiting for a table lock (`pipeline.sync.extract._LOCK_TIMEOUT`)."""
    return _postgres_error(exc, "55P03", "canceling statement due to lock timeout")


def _refused_privilege(exc: BaseException) -> bool:
    """Postgres refused for want of a privilege."""
    return _postgres_error(exc, "42501", "permission denied for ")


def _postgres_error(exc: BaseException, sqlstate: str, words: str) -> bool:
    """Whether `exc` is the Postgres error `sqlstate`: psycopg and ADBC carry the SQLSTATE, ConnectorX's errors only
    the server's `words`."""
    return getattr(exc, "sqlstate", None) == sqlstate or (isinstance(exc, RuntimeError) and words in str(exc))


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (drivers put the cause there, hints after it)."""
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split())[:limit] if text else type(exc).__name__
