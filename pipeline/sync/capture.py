"""Change capture in a run: which facts were updated or deleted since the last run, from the logical slot.

The slot (`pipeline.source.capture`) streams, in commit order, every transaction that updated, deleted or truncated
a source table. A run reads it after taking its snapshot and uses it as a signal only: the ids it names are read
again inside the snapshot (`pipeline.sync.fact_changes`). Re-reading is idempotent, so ids from transactions the
snapshot does not see yet do no harm (their rows read as the snapshot has them).

A run reads the slot up to a bound: its snapshot's LSN, or the WAL flushed when it reads, if lower. The slot
advances, after the run's state is committed, to that bound when the snapshot sees every transaction read, else to
the end of the last transaction of the longest run of them, from the start of the stream, that the snapshot sees:
everything up to there is in the warehouse. A transaction the snapshot does not see, and all after it, is read
again by the next run. Until the advance, a crash only means the same changes are read, and applied as no-ops,
again.

The slot is trusted only when it existed before a full run's snapshot (then nothing committed after that
snapshot can be missing from it); the state names it from then on (`SyncState.capture_slot`). A slot that is
gone or lost stops incremental runs: changes may be missing, and only a full run can make up for them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

import psycopg

from pipeline.catalog import FACTS, SOURCE_TABLES
from pipeline.config import Settings, mask_url
from pipeline.errors import SourceError, SyncRefusedError
from pipeline.source import capture as slots
from pipeline.source.pgoutput import DecodedTransaction
from pipeline.source.postgres import check_source_columns, connect, connect_replica, postgres_url
from pipeline.sync.extract import Snapshot
from pipeline.sync.state import SyncState, load_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Changes:
    """What the slot says changed, as of a run's snapshot."""

    changed: MappingProxyType[str, frozenset[int]] = field(default_factory=lambda: MappingProxyType({}))
    """Fact table → ids updated (before and after an id change) or deleted."""
    truncated: frozenset[str] = frozenset()
    """Fact tables truncated by a transaction the snapshot sees."""
    advance_to: int | None = None
    """The LSN the slot may advance to once the run is committed (see `collect`); None: capture is off."""
    transactions: int = 0


@dataclass
class RunCapture:
    """Change capture for one run: the slot it reads (None: off, and `off_reason` says why)."""

    slot: str | None
    off_reason: str | None
    trusted: bool
    """Whether the slot holds every change since the committed state (see the module docstring)."""
    conn: psycopg.Connection | None = None
    starts_at: str | None = None
    """A full run's slot: its confirmed position as the run armed it, where its stream of changes begins."""
    created: bool = False
    """This run created the slot (a full run, the slot missing): a run that stops while reading drops it again."""

    def check_snapshot(self, snapshot: Snapshot) -> None:
        """A full run: the slot holds the changes after `starts_at`, the snapshot those before its own LSN. Read from
        a replica that had not replayed up to `starts_at`, the changes in between are in neither, so the slot is not
        trusted for this run's state: incremental runs go without capture (saying so) until the next full run."""
        if self.starts_at is None or slots.lsn_value(snapshot.lsn) >= slots.lsn_value(self.starts_at):
            return
        self.trusted, self.conn = False, None  # the run reads no changes, and its state names no slot
        self.off_reason = (
            f"the replica had replayed the source up to {snapshot.lsn} when the full sync took its snapshot, behind"
            f" the start of replication slot {self.slot} ({self.starts_at}); the next full sync starts capture"
        )
        log.warning("change capture is off until the next full sync: %s", self.off_reason)

    def read(self, snapshot: Snapshot) -> Changes | None:
        """The changes as of `snapshot`, or None when capture is off (the fallback checks apply)."""
        if self.slot is None or self.conn is None:
            return None
        # Decoding stops at the WAL flushed when the peek starts. A commit written but not yet flushed at the
        # snapshot's LSN would be missing from the stream, and advancing past it would skip it for good: the bound
        # is the flush position read before the peek, when it is lower.
        upto = min(slots.lsn_value(snapshot.lsn), slots.flushed_lsn(self.conn))
        try:
            return collect(slots.peek_transactions(self.conn, self.slot, upto), snapshot.text, upto)
        except SourceError:
            if slots.slot_info(self.conn, self.slot) is None:  # dropped since the run checked it
                raise SyncRefusedError(_slot_refusal(self.slot, "was dropped")) from None
            raise


@contextmanager
def run_capture(settings: Settings, state: SyncState, full: bool) -> Iterator[RunCapture]:
    """Open change capture for a run, before its snapshot is taken: a full run creates the slot if missing."""
    if not settings.change_capture:
        capture = RunCapture(None, "ADPIPE_CHANGE_CAPTURE is off", trusted=False)
        _warn_off(capture, state)
        yield capture
        return
    if settings.postgres_replica_url:
        # The run reads the replica, and the slot is on the primary: the replica's problems are reported first, as
        # they were before the slot existed (a standby without the source schema says what to do).
        connect_replica(settings).close()
    conn = _connect_primary(settings)
    conn.autocommit = True
    capture = None
    try:
        capture = _arm(conn, settings, state) if full else _check(conn, settings, state)
        capture.conn = conn if capture.slot else None
        _warn_off(capture, state)
        yield capture
    except BaseException:
        if capture is not None and capture.created and capture.slot is not None:
            # The run stops before it staged anything, and no state names the slot: it would hold WAL for a sync
            # that may never come (a role without a grant, a typo in a URL).
            _drop_unused(conn, capture.slot)
        raise
    finally:
        conn.close()


def _drop_unused(conn: psycopg.Connection, slot: str) -> None:
    try:
        slots.drop_slot(conn, slot)
    except Exception as exc:
        log.warning("replication slot %s, created by this run, is left behind (%s): `adpipe capture drop`", slot, exc)


def _connect_primary(settings: Settings) -> psycopg.Connection:
    """The slot's server: the one the sync reads, or with a replica, its primary (which must then be reachable).

    The source schema is made if missing, as the sync's reader would make it: the publication names its tables.
    """
    if not settings.postgres_replica_url:
        return connect(settings)
    why = (
        "a sync from a standby still takes one transaction id per run on the primary (ADPIPE_POSTGRES_URL),"
        " and reads the change-capture slot there"
    )
    try:
        conn = connect(settings, ensure_schema=False, what="the primary Postgres")
    except SourceError as exc:
        raise SourceError(f"{exc}; {why}", url=exc.url, transient=exc.transient) from None
    if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        conn.close()
        url = mask_url(postgres_url(settings))
        raise SourceError(f"the primary Postgres at {url} is in recovery (a standby): {why}", url=url)
    conn.rollback()
    return conn


def _arm(conn: psycopg.Connection, settings: Settings, state: SyncState) -> RunCapture:
    """A full run: the publication and a healthy slot, created now (before the snapshot) if need be."""
    if reason := slots.unsupported_reason(conn):
        return RunCapture(None, reason, trusted=False)
    slot = warehouse_slot(settings, conn.info.dbname)
    check_source_columns(conn, postgres_url(settings))  # the publication names the tables: say first if one is gone
    slots.ensure_publication(conn, SOURCE_TABLES)
    if state.capture_slot not in (None, slot):
        # A slot named before names told warehouses apart: this warehouse no longer follows it.
        slots.drop_slot(conn, state.capture_slot)
    info = slots.slot_info(conn, slot)
    if info is not None and info.wal_status == "lost":
        log.warning("replication slot %s lost the WAL it needed; creating it again", slot)
        slots.drop_slot(conn, slot)
        info = None
    created = info is None
    if created and not slots.create_slot(conn, slot, settings.capture_wait_seconds):
        return RunCapture(
            None,
            f"creating replication slot {slot} waited {settings.capture_wait_seconds:g} s for transactions already"
            " running to end (ADPIPE_CAPTURE_WAIT_SECONDS); the next full sync tries again",
            trusted=False,
        )
    armed = slots.slot_info(conn, slot) if settings.postgres_replica_url else None  # see `RunCapture.check_snapshot`
    return RunCapture(slot, None, trusted=True, starts_at=armed.confirmed_flush_lsn if armed else None, created=created)


def _check(conn: psycopg.Connection, settings: Settings, state: SyncState) -> RunCapture:
    """An incremental run: the slot the committed state follows must still be there, with its WAL."""
    if state.capture_slot is None:
        reason = slots.unsupported_reason(conn) or "it starts with the next full sync (`adpipe sync --mode full`)"
        return RunCapture(None, reason, trusted=False)
    # Read from a replica, the last run's snapshot is at the replica's replay position, not comparable with the slot's.
    last_snapshot = None if settings.postgres_replica_url else state.source_lsn
    if problem := _slot_problem(slots.slot_info(conn, state.capture_slot), last_snapshot):
        raise SyncRefusedError(_slot_refusal(state.capture_slot, problem))
    if problem := slots.publication_problem(conn, SOURCE_TABLES):
        check_source_columns(conn, postgres_url(settings))  # a table renamed also leaves the publication: name it
        raise SyncRefusedError(
            f"publication {slots.PUBLICATION} {problem}: fact updates and deletes since the last sync may be missing;"
            " run `adpipe sync --mode full`, which sets it back and reloads"
        )
    return RunCapture(state.capture_slot, None, trusted=True)


def _slot_refusal(slot: str, problem: str) -> str:
    return (
        f"replication slot {slot} {problem}: fact updates and deletes since the last sync cannot be read;"
        " run `adpipe sync --mode full` to reload and start change capture again"
    )


def _slot_problem(info: slots.SlotInfo | None, last: str | None) -> str | None:
    """Why the slot the committed state follows may lack changes since the last run (whose snapshot was at LSN
    `last`, None: not known), or None."""
    if info is None:
        return "was dropped"
    if info.wal_status == "lost":
        return "lost WAL it had not delivered yet (max_slot_wal_keep_size)"
    # Runs advance the slot up to their snapshot at most: one past the last run's was dropped and created again
    # (`capture drop`, then `init`) or advanced by hand, and the changes in between are in no slot.
    confirmed = info.confirmed_flush_lsn
    if confirmed is not None and last is not None and slots.lsn_value(confirmed) > slots.lsn_value(last):
        return f"is past the last sync ({confirmed} > {last}): it was created again, or advanced by someone else"
    return None


def _warn_off(capture: RunCapture, state: SyncState) -> None:
    if capture.slot is not None:
        return
    log.warning(
        "change capture is off (%s): fact updates are not seen, and deleted facts are found by comparing counts",
        (capture.off_reason or "").removeprefix("change capture is not possible: "),
    )
    if state.capture_slot is not None and capture.off_reason == "ADPIPE_CHANGE_CAPTURE is off":
        log.warning(
            "replication slot %s still holds WAL for this warehouse: `adpipe capture drop` removes it",
            state.capture_slot,
        )


def collect(transactions: Iterator[DecodedTransaction], snapshot_text: str, upto: int) -> Changes:
    """Fold the decoded stream of the transactions that committed before LSN `upto` (the run's bound, see
    `RunCapture.read`) into the ids to read again and the LSN the slot may advance to.

    When the snapshot sees every one of them, the slot may advance to `upto` itself, past the transactions that
    published nothing (inserts): otherwise a source that only inserts would keep its slot, and all its WAL, where
    the last update left it. Else it may advance to the end of the longest run of them it sees, from the start.
    """
    xmin, xmax, running = parse_snapshot(snapshot_text)
    changed: dict[str, set[int]] = {table: set() for table in FACTS}
    truncated: set[str] = set()
    advance_to: int | None = None
    seen_all = True
    count = 0
    for transaction in transactions:
        count += 1
        for table, ids in transaction.changed.items():
            if table in changed:
                changed[table].update(ids)
        seen_all = seen_all and visible(transaction.xid, xmin, xmax, running)
        if seen_all:
            advance_to = transaction.end_lsn
            truncated.update(table for table in transaction.truncated if table in FACTS)
    if seen_all:
        advance_to = max(upto, advance_to or 0)
    frozen = MappingProxyType({table: frozenset(ids) for table, ids in changed.items()})
    return Changes(frozen, frozenset(truncated), advance_to, count)


def parse_snapshot(text: str) -> tuple[int, int, frozenset[int]]:
    """`xmin:xmax:xip,…` (pg_current_snapshot) as numbers."""
    xmin, xmax, running = text.split(":")
    return int(xmin), int(xmax), frozenset(int(x) for x in running.split(",") if x)


def visible(xid: int, xmin: int, xmax: int, running: frozenset[int]) -> bool:
    """Whether a committed transaction with 32-bit id `xid` is visible in the snapshot (xmin, xmax, xip are 64-bit).

    The 64-bit id is the one within 2^31 of xmax, the rule Postgres itself uses to widen a 32-bit id.
    """
    offset = (xid - xmax) % 2**32
    full = xmax + (offset - 2**32 if offset >= 2**31 else offset)
    return full < xmin or (full < xmax and full not in running)


def advance(settings: Settings, slot: str | None, lsn: int | None) -> None:
    """Move the slot past what a committed run applied. A failure is only logged: the run is committed, and the
    next run reads the same changes again (as no-ops)."""
    if slot is None or lsn is None:
        return
    try:
        with connect(settings, ensure_schema=False) as conn:
            conn.autocommit = True
            slots.advance_slot(conn, slot, lsn)
    except Exception as exc:
        log.warning("could not advance replication slot %s to %s: %s", slot, slots.format_lsn(lsn), exc)


def start_capture(settings: Settings) -> tuple[str, bool]:
    """`adpipe init`: the publication and the slot, created where missing. Returns (slot, whether it was created).

    A slot created here is trusted from the next full sync on (a first sync is one): changes made between an earlier
    sync and now are in no slot. Raises SourceError when the server or the role cannot (the line says what to set).
    """
    with connect(settings) as conn:
        conn.autocommit = True
        slot = warehouse_slot(settings, conn.info.dbname)
        if reason := slots.unsupported_reason(conn):
            raise SourceError(reason, url=mask_url(postgres_url(settings)))
        slots.ensure_publication(conn, SOURCE_TABLES)
        if slots.slot_info(conn, slot) is not None:
            return slot, False
        if not slots.create_slot(conn, slot, settings.capture_wait_seconds):
            raise SourceError(
                f"creating replication slot {slot} waited {settings.capture_wait_seconds:g} s for transactions"
                " already running to end (ADPIPE_CAPTURE_WAIT_SECONDS): run `adpipe init` again when they have",
                url=mask_url(postgres_url(settings)),
                transient=True,
            )
        return slot, True


def drop_capture(settings: Settings) -> str | None:
    """`adpipe capture drop`: remove this warehouse's slot, so a retired pipeline holds no WAL. The slot's name,
    or None if there was none. Incremental syncs refuse afterwards, until a full sync starts capture again.

    The slot is the one the committed state follows, else the one `adpipe init` would have created."""
    with connect(settings, ensure_schema=False) as conn:
        conn.autocommit = True
        slot = load_state(settings.home).capture_slot or warehouse_slot(settings, conn.info.dbname)
        return slot if slots.drop_slot(conn, slot) else None


def warehouse_slot(settings: Settings, source_database: str) -> str:
    """The name of the slot that feeds this warehouse from `source_database` (see `slot_name`)."""
    engine = urlsplit(settings.clickhouse_url)
    address = f"{engine.scheme}://{engine.hostname or ''}:{engine.port or ''}{engine.path}"
    return slots.slot_name(settings.clickhouse_database, f"{address} {source_database}")
