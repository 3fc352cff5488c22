"""Change capture from the source's WAL: the publication, one logical replication slot per warehouse, and reading it.

Everything goes over an ordinary connection through SQL functions (no replication protocol). The slot is peeked
(`pg_logical_slot_peek_binary_changes`), which consumes nothing, and advanced separately: advanced only once what
was read is safely in the warehouse, a run that fails reads the same transactions again. The `pgoutput` plugin
ships with Postgres; the publication limits it to the tables and operations capture needs (updates, deletes and
truncates: inserts are found by id). A slot keeps the WAL it has not been advanced past: `slot_info` says how
much, and whether the server gave up keeping it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pipeline.errors import SourceError, first_line
from pipeline.source.pgoutput import DecodedTransaction, decode_transactions

log = logging.getLogger(__name__)

PUBLICATION = "adpipe"
"""The publication every slot of adpipe decodes through: the captured tables, their updates, deletes, truncates."""

_PUBLISH = "update, delete, truncate"
_MAX_NAME = 63  # NAMEDATALEN - 1: Postgres' longest identifier, slot names included


def slot_name(warehouse_database: str, warehouse: str) -> str:
    """The slot of one warehouse fed from this source: one per warehouse, as each advances on its own.

    Slot names are unique across the whole server, so two warehouses with the same database name (two embedded
    homes, say) must not share one: the first to advance it would skip changes the other has not applied.
    `warehouse` tells them apart (the engine's address and the source database); its hash ends the name. The rest
    is the warehouse database in the characters slot names allow (lower-case letters, digits, `_`).
    """
    suffix = hashlib.sha256(warehouse.encode()).hexdigest()[:8]
    stem = ("adpipe_" + re.sub(r"[^a-z0-9_]", "_", warehouse_database.lower()))[: _MAX_NAME - len(suffix) - 1]
    return f"{stem}_{suffix}"


def lsn_value(lsn: str) -> int:
    """A `pg_lsn` text (`16/B374D848`) as a number, for comparing positions."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    """A position as `pg_lsn` text (`16/B374D848`): the inverse of `lsn_value`."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class SlotInfo:
    """A replication slot as `pg_replication_slots` shows it."""

    name: str
    confirmed_flush_lsn: str | None
    """Where the slot was advanced to: peeking returns the transactions that end after it."""
    wal_status: str | None
    """reserved or extended: the WAL it needs is kept; unreserved: about to be removed; lost: removed, the slot
    can no longer be read and must be created again (with a full sync, as changes were missed)."""
    retained_bytes: int | None
    """WAL kept for the slot, from its restart LSN to the current one; None when it has no restart LSN (lost)."""


def _where(conn: psycopg.Connection) -> str:
    """The connection's server as a URL without a password, for SourceError."""
    info = conn.info
    return f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"


@contextmanager
def _refusals(conn: psycopg.Connection, doing: str, grant: str) -> Iterator[None]:
    """Turn the server refusing `doing` into one SourceError line: for want of a privilege, saying what to grant
    (`grant`); for want of a setting, saying which. Other failures (bugs, a broken connection) are left as they are.
    """
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SourceError(f"cannot {doing}: {first_line(exc)}; {grant}", url=_where(conn)) from None
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:
        # wal_level below logical, a slot of another database, a slot the server invalidated (its detail says why)
        reason = _reason_or_none(conn) or _with_detail(exc)
        raise SourceError(f"cannot {doing}: {reason}", url=_where(conn)) from None
    except psycopg.errors.UndefinedObject as exc:
        raise SourceError(f"cannot {doing}: {first_line(exc)}", url=_where(conn)) from None
    except psycopg.errors.ObjectInUse as exc:
        raise SourceError(f"cannot {doing}: {first_line(exc)}", url=_where(conn), transient=True) from None


def _with_detail(exc: psycopg.Error) -> str:
    detail = exc.diag.message_detail
    return f"{first_line(exc)} ({first_line(Exception(detail))})" if detail else first_line(exc)


def _reason_or_none(conn: psycopg.Connection) -> str | None:
    try:
        return unsupported_reason(conn)
    except psycopg.Error:
        return None


def _role_sql(role: str) -> str:
    """The role's name as SQL to paste into a command: bare when that reads back as the same name."""
    return role if re.fullmatch(r"[a-z_][a-z0-9_]*", role) else '"' + role.replace('"', '""') + '"'


def _role_grant(conn: psycopg.Connection) -> str:
    return f"the role needs the REPLICATION attribute: run ALTER ROLE {_role_sql(conn.info.user)} REPLICATION"


def unsupported_reason(conn: psycopg.Connection) -> str | None:
    """None when this server and role can capture changes; else one line saying why not and what to change."""
    with conn.transaction():
        row = conn.execute(
            "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int, r.rolname,"
            " r.rolsuper, r.rolreplication FROM pg_roles AS r WHERE r.rolname = current_user"
        ).fetchone()
    assert row is not None, "current_user is not in pg_roles"
    return _reason(*row)


def _reason(wal_level: str, max_slots: int, role: str, superuser: bool, replication: bool) -> str | None:
    reasons = []
    if wal_level != "logical":
        reasons.append(
            f"wal_level is {wal_level}, not logical: run ALTER SYSTEM SET wal_level = logical and restart Postgres"
        )
    if max_slots == 0:
        reasons.append("max_replication_slots is 0: run ALTER SYSTEM SET max_replication_slots = 10 and restart")
    if not (superuser or replication):
        reasons.append(f"role {role} lacks the REPLICATION attribute: run ALTER ROLE {_role_sql(role)} REPLICATION")
    return "change capture is not possible: " + "; ".join(reasons) if reasons else None


def _table(name: str) -> tuple[str, str]:
    """A table name as the decoder reports it (`impressions`, `other.t`) as (schema, table)."""
    schema, _, table = name.rpartition(".")
    return schema or "public", table


def ensure_publication(conn: psycopg.Connection, tables: Sequence[str]) -> None:
    """Make the publication `adpipe` publish exactly `tables`' updates, deletes and truncates.

    It must exist before a slot is created: decoding looks the publication up as the catalogs were at each
    change, so changes written before it existed cannot be decoded through it. Creating it needs CREATE on the
    database and ownership of every table; an advisory lock keeps two first runs from racing to create it.
    """
    wanted = {_table(name) for name in tables}
    grant = "the role must own the tables and have CREATE on the database (or own the publication)"
    with _refusals(conn, f"create or alter the publication {PUBLICATION}", grant), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('adpipe.publication'))")
        flags, published = _publication(conn)
        names = sql.SQL(", ").join(sql.Identifier(schema, table) for schema, table in sorted(wanted))
        publication = sql.Identifier(PUBLICATION)
        if flags is None:
            log.info("creating publication %s for %s", PUBLICATION, ", ".join(tables))
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {})").format(
                    publication, names, sql.Literal(_PUBLISH)
                )
            )
            return
        if flags != _PUBLISHED_FLAGS:
            log.info("setting publication %s to publish %s", PUBLICATION, _PUBLISH)
            conn.execute(sql.SQL("ALTER PUBLICATION {} SET (publish = {})").format(publication, sql.Literal(_PUBLISH)))
        if published != wanted:
            log.info("setting publication %s to tables %s", PUBLICATION, ", ".join(tables))
            conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(publication, names))


def publication_problem(conn: psycopg.Connection, tables: Sequence[str]) -> str | None:
    """What keeps the publication from publishing `tables`' updates, deletes and truncates (someone altered or
    dropped it since `ensure_publication`), or None. Reading the catalog needs no privilege."""
    flags, published = _publication(conn)
    if flags is None:
        return "is gone"
    if flags[1:] != _PUBLISHED_FLAGS[1:]:
        return "no longer publishes every update, delete and truncate"
    if missing := sorted(name for name in tables if _table(name) not in published):
        return f"no longer publishes {', '.join(missing)}"
    return None


_PUBLISHED_FLAGS = (False, True, True, True)
"""pubinsert, pubupdate, pubdelete, pubtruncate: `_PUBLISH`."""


def _publication(conn: psycopg.Connection) -> tuple[tuple[bool, ...] | None, set[tuple[str, str]]]:
    """The publication's (pubinsert, pubupdate, pubdelete, pubtruncate), None when there is none, and its tables."""
    row = conn.execute(
        "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = %s", (PUBLICATION,)
    ).fetchone()
    published = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (PUBLICATION,)
    ).fetchall()
    return (tuple(row) if row else None), set(published)


def create_slot(conn: psycopg.Connection, slot: str, wait_seconds: float) -> bool:
    """Create the logical slot `slot` (pgoutput) in this database; False if that took over `wait_seconds`.

    Creating a slot waits for every transaction that had written when it started to end: one left open holds
    it up indefinitely. lock_timeout would bound each of those waits, not their sum (measured: with 1.5 s and
    four transactions ending a second apart it gave up after 4.5 s), so statement_timeout bounds the whole call.
    A slot given up on is not left behind. `conn` must be outside any transaction: the timeout is set for
    the transaction this opens, and must end with it.
    """
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, "create_slot inside a transaction"
    timeout_ms = max(1, round(wait_seconds * 1000))
    try:
        with _refusals(conn, f"create the replication slot {slot}", _role_grant(conn)), conn.transaction():
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(timeout_ms)))
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    except psycopg.errors.QueryCanceled:
        log.warning(
            "gave up creating replication slot %s after waiting %.1f s for transactions open on the source to end;"
            " it is tried again on the next run",
            slot,
            wait_seconds,
        )
        return False
    log.info("created replication slot %s", slot)
    return True


def flushed_lsn(conn: psycopg.Connection) -> int:
    """How far the server's WAL is flushed (a standby: replayed): as far as a slot on it decodes right now."""
    with conn.transaction():
        (lsn,) = conn.execute(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END)"
            "::text"
        ).fetchone()
    return lsn_value(lsn)


def slot_info(conn: psycopg.Connection, slot: str) -> SlotInfo | None:
    """The slot named `slot` (in any database of the server), or None when there is none."""
    with conn.transaction():
        row = conn.execute(
            "SELECT slot_name::text, confirmed_flush_lsn::text, wal_status,"
            " pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
            " ELSE pg_current_wal_lsn() END, restart_lsn)::bigint"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return None if row is None else SlotInfo(*row)


_PEEK = (
    "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, NULL,"
    " 'proto_version', '1', 'publication_names', %s)"
)
_FETCH = 20_000


def peek_transactions(conn: psycopg.Connection, slot: str, upto: int | None = None) -> Iterator[DecodedTransaction]:
    """The transactions committed past the slot's confirmed position, oldest first, without consuming them.

    `upto`: only those that committed before this LSN (None: all so far). Transactions that changed nothing the
    publication publishes (inserts, say) are not in the stream at all.

    The server decodes them into a tuplestore (spilled to disk past work_mem); a server-side cursor brings them
    over `_FETCH` messages at a time. This runs in a transaction of its own, ended when the iterator is
    exhausted or closed; on a connection already in one (a REPEATABLE READ read of the snapshot, say) it runs in
    a savepoint of it, and that transaction stays open with its snapshot. Do not use `conn` for anything else
    until the iterator is done.
    """
    with (
        _refusals(conn, f"read the replication slot {slot}", _role_grant(conn)),
        conn.transaction(),
        conn.cursor(name="adpipe_peek", binary=True) as cursor,
    ):
        cursor.itersize = _FETCH
        cursor.execute(_PEEK, (slot, None if upto is None else format_lsn(upto), PUBLICATION))
        found = False
        for transaction in decode_transactions(data for (data,) in cursor):
            found = True
            yield transaction
        # Postgres 18 decodes through a missing publication as through one publishing nothing, without an error.
        if not found and not _published(conn):
            raise SourceError(
                f"cannot read the replication slot {slot}: the publication {PUBLICATION} is missing, so no change"
                " is decoded; drop the slot and start change capture again, with a full sync",
                url=_where(conn),
            )


def _published(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (PUBLICATION,)).fetchone() is not None


def advance_slot(conn: psycopg.Connection, slot: str, lsn: int) -> None:
    """Move the slot's confirmed position up to `lsn` (a transaction's `end_lsn`), releasing the WAL before it.

    Postgres refuses to move a slot back, and a position at or below the confirmed one is already done: those
    are no-ops. The server writes a slot's position to disk at checkpoints, so after a crash it may be back at
    an earlier one and return transactions already advanced past: a reader must take them again without harm.
    """
    with _refusals(conn, f"advance the replication slot {slot}", _role_grant(conn)), conn.transaction():
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        if row is None:
            raise SourceError(f"cannot advance the replication slot {slot}: there is none", url=_where(conn))
        if row[0] is not None and lsn <= lsn_value(row[0]):
            return
        conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, format_lsn(lsn)))


def drop_slot(conn: psycopg.Connection, slot: str) -> bool:
    """Drop the slot, letting the server remove the WAL it kept; False if there was none."""
    with _refusals(conn, f"drop the replication slot {slot}", _role_grant(conn)), conn.transaction():
        dropped = conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchall()
    if dropped:
        log.info("dropped replication slot %s", slot)
    return bool(dropped)
