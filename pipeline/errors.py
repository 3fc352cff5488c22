"""The one exception type the CLI turns into a single clear line, and the mapping of driver errors to lines."""

from __future__ import annotations

import sys


class AdpipeError(Exception):
    """A problem the user can act on: bad input, an unreachable server, a busy lock.

    The message is shown as-is, on one line, without a traceback.
    """


def describe_failure(exc: BaseException) -> str | None:
    """One line for an expected failure (ours, or a database connection that broke); None for a bug.

    Driver modules are looked up in `sys.modules` rather than imported: an exception of a driver
    that was never imported cannot be raised, and importing it here would slow every command.
    """
    if isinstance(exc, AdpipeError):
        return str(exc)
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        return f"Postgres connection failed: {first_line(exc)}"
    ch_exceptions = sys.modules.get("clickhouse_connect.driver.exceptions")
    if ch_exceptions is not None and isinstance(exc, ch_exceptions.ClickHouseError):
        from pipeline.clickhouse import describe_error
        from pipeline.config import load_settings

        return describe_error(exc, load_settings().clickhouse_url)
    return None


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (drivers put the cause there, hints after it)."""
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split())[:limit] if text else type(exc).__name__
