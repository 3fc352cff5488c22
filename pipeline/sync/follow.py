"""`adpipe sync --follow`: incremental syncs, with change capture, one after another in one process.

The follower holds the sync lock for its whole life (a second follower, or a one-shot sync, fails at once with
"sync is busy") and keeps the warehouse client and its Postgres connections open between runs. It lends the
embedded engine (`client.lend_engine`): a command from another shell that needs it waits, and the follower hands
it over between runs, taking it back for the next one. Each run is a complete sync: staged, loaded, committed,
slot advanced; stopping between runs loses nothing, and a run killed half way is recovered by the next as always.

A run that fails for a reason that may pass (`errors.is_transient`: a server unreachable, a busy lock, a replica
behind) is reported and retried after a backoff that doubles from the interval; one that needs a person (a reset
source, a lost slot, bad settings) ends the loop with its error, so the process exits non-zero with its line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from pipeline.config import Settings
from pipeline.errors import BusyError, describe_failure, is_transient
from pipeline.options import Mode
from pipeline.source.postgres import keep_connections
from pipeline.sync.run import SyncOptions, check_options, sync_lock, sync_locked
from pipeline.sync.runlog import SyncResult
from pipeline.warehouse import client as clickhouse

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 300.0
_IDLE_POLL_SECONDS = 0.1
"""While idle, how often the follower looks for a process waiting for the embedded engine."""


@dataclass(frozen=True)
class Tick:
    """One run of the follower, as reported: a result, or the error of a failed run and when it is retried."""

    result: SyncResult | None
    seconds: float
    error: str | None = None
    failures: int = 0
    """Consecutive failed runs, this one included."""
    retry_in: float | None = None


Report = Callable[[Tick], None]


def backoff(interval: float, failures: int) -> float:
    """Seconds before retrying after `failures` consecutive failures: the interval, doubled each time, capped."""
    return min(max(interval, 1.0) * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)


def follow(settings: Settings, options: SyncOptions, interval: float, stop: threading.Event, report: Report) -> None:
    """Sync every `interval` seconds until `stop` is set; the current run always finishes first.

    `options` apply to the first run (e.g. `--mode full`); every later one is incremental, without `--repair`.
    Raises the error of a run that failed for a reason that will not pass by itself.
    """
    check_options(options)
    with (
        sync_lock(settings),
        keep_connections(),
        clickhouse.lend_engine(settings) as hand_over,
        _repeats_quiet() as repeats,
    ):
        schema_ready, failures = False, 0
        while not stop.is_set():
            repeats.next_run()
            began = time.monotonic()
            try:
                result = sync_locked(settings, options, schema_ready=schema_ready)
            except Exception as exc:
                failures += 1
                wait = _failed(exc, interval, failures, time.monotonic() - began, report)
            else:
                schema_ready, failures = True, 0
                options = replace(options, mode=Mode.INCREMENTAL, repair=False)
                elapsed = time.monotonic() - began
                report(Tick(result, elapsed))
                wait = interval - elapsed
            _idle(stop, wait, hand_over)


class RepeatedWarnings(logging.Filter):
    """Drops a warning the previous run gave too: a condition every run reports (change capture off, say) is said
    when the follower meets it, not every interval, and again if it comes back after a run without it. Errors
    always pass."""

    def __init__(self) -> None:
        super().__init__()
        self.previous: set[tuple[str, str]] = set()
        self.current: set[tuple[str, str]] = set()

    def next_run(self) -> None:
        self.previous, self.current = self.current, set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        key = (record.name, record.getMessage())
        self.current.add(key)
        return key not in self.previous


@contextmanager
def _repeats_quiet() -> Iterator[RepeatedWarnings]:
    """`RepeatedWarnings` on the handlers that print: a logger's own filters do not see its children's records."""
    handlers = list(logging.getLogger().handlers)
    repeats = RepeatedWarnings()
    for handler in handlers:
        handler.addFilter(repeats)
    try:
        yield repeats
    finally:
        for handler in handlers:
            handler.removeFilter(repeats)


def _failed(exc: Exception, interval: float, failures: int, seconds: float, report: Report) -> float:
    """Report a failed run and return the backoff, or raise its error when it will not pass by itself."""
    message = describe_failure(exc)
    if message is not None and not is_transient(exc):
        raise exc
    if message is None:  # a bug: keep the traceback in the log, and the loop alive
        log.error("sync run failed unexpectedly", exc_info=exc)
        message = f"unexpected {type(exc).__name__}: {exc}"
    # Busy: another process holds the engine or the lock for a while (a notebook's kernel), and backing off further
    # would only delay the run after it lets go.
    delay = backoff(interval, 1 if isinstance(exc, BusyError) else failures)
    report(Tick(None, seconds, message, failures, delay))
    return delay


def _idle(stop: threading.Event, seconds: float, hand_over: Callable[[], bool]) -> None:
    """Wait `seconds` or until `stop`, handing the engine over to any process that asks meanwhile."""
    deadline = time.monotonic() + max(seconds, 0.0)
    while True:
        hand_over()
        remaining = deadline - time.monotonic()
        if remaining <= 0 or stop.wait(min(remaining, _IDLE_POLL_SECONDS)):
            return
