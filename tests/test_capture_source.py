"""Change capture, the source side: the pgoutput decoder on hand-built messages, and the slot on the real server.

The decoder's inputs are built here with struct.pack from the protocol's documented layout (big-endian integers,
zero-ended strings), so the expected results are known without Postgres. The slot tests write rows on the
session's embedded Postgres (wal_level=logical) and check what the slot returns against what was written: the
ids touched, each transaction's xid as `txid_current()` reported it inside it, positions read around each commit.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from pipeline.catalog import SOURCE_TABLES
from pipeline.config import Settings
from pipeline.errors import ChangeCaptureError, SourceError
from pipeline.source.capture import (
    PUBLICATION,
    _reason,
    advance_slot,
    create_slot,
    drop_slot,
    ensure_publication,
    format_lsn,
    lsn_value,
    peek_transactions,
    slot_info,
    slot_name,
    unsupported_reason,
)
from pipeline.source.pgoutput import DecodedTransaction, decode_transactions
from tests.harness import capture_slot

# --- pgoutput messages, built as the protocol documents them -------------------------------------------------


def _string(text: str) -> bytes:
    return text.encode() + b"\0"


def begin(final_lsn: int, xid: int) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, 770_000_000_000_000, xid)


def commit(commit_lsn: int, end_lsn: int) -> bytes:
    return b"C" + struct.pack("!BQQq", 0, commit_lsn, end_lsn, 770_000_000_000_000)


def relation(relation_id: int, namespace: str, name: str, columns: list[str]) -> bytes:
    body = (
        struct.pack("!I", relation_id) + _string(namespace) + _string(name) + struct.pack("!BH", ord("d"), len(columns))
    )
    for column in columns:
        body += struct.pack("!B", int(column == "id")) + _string(column) + struct.pack("!Ii", 23, -1)
    return b"R" + body


def tuple_data(*columns: str | bytes | None) -> bytes:
    """A TupleData: str is a text value, bytes a binary one, None a null, ... an unchanged TOAST value."""
    body = struct.pack("!H", len(columns))
    for value in columns:
        if value is None:
            body += b"n"
        elif value is Ellipsis:
            body += b"u"
        elif isinstance(value, str):
            body += b"t" + struct.pack("!i", len(value.encode())) + value.encode()
        else:
            body += b"b" + struct.pack("!i", len(value)) + value
    return body


def insert(relation_id: int, new: bytes) -> bytes:
    return b"I" + struct.pack("!I", relation_id) + b"N" + new


def update(relation_id: int, new: bytes, old: bytes | None = None, marker: bytes = b"K") -> bytes:
    return b"U" + struct.pack("!I", relation_id) + (marker + old if old is not None else b"") + b"N" + new


def delete(relation_id: int, old: bytes, marker: bytes = b"K") -> bytes:
    return b"D" + struct.pack("!I", relation_id) + marker + old


def truncate(*relation_ids: int, options: int = 0) -> bytes:
    return b"T" + struct.pack(f"!IB{len(relation_ids)}I", len(relation_ids), options, *relation_ids)


def type_message(type_id: int, namespace: str, name: str) -> bytes:
    return b"Y" + struct.pack("!I", type_id) + _string(namespace) + _string(name)


def origin(lsn: int, name: str) -> bytes:
    return b"O" + struct.pack("!Q", lsn) + _string(name)


def logical_message(prefix: str, content: bytes, transactional: bool = True) -> bytes:
    return (
        b"M"
        + struct.pack("!BQ", int(transactional), 0x99)
        + _string(prefix)
        + struct.pack("!i", len(content))
        + content
    )


IMPRESSIONS = relation(16404, "public", "impressions", ["id", "campaign_id", "created_at"])
CLICKS = relation(16420, "public", "clicks", ["id", "campaign_id", "created_at"])
NO_ID = relation(16430, "public", "notes", ["note_id", "text"])


def row(row_id: str | bytes | None, campaign: str = "7") -> bytes:
    return tuple_data(row_id, campaign, "2026-01-01 00:00:00")


def key(row_id: str | bytes | None) -> bytes:
    """An old key tuple: the replica identity (the primary key), every other column null."""
    return tuple_data(row_id, None, None)


def decoded(*messages: bytes) -> list[DecodedTransaction]:
    return list(decode_transactions(messages))


# --- the decoder ----------------------------------------------------------------------------------------------


def test_updates_deletes_and_truncates_are_decoded_per_transaction_and_inserts_are_skipped() -> None:
    transactions = decoded(
        begin(0x1_0000_0100, 901),
        origin(0x55, "upstream"),
        type_message(90001, "public", "mood"),
        IMPRESSIONS,
        insert(16404, row("40")),
        update(16404, row("1", "8")),  # a column other than the key: only the new tuple
        update(16404, row("200"), old=key("2")),  # the key itself: the old key, then the new row
        update(16404, row("5"), old=row("5", "1"), marker=b"O"),  # REPLICA IDENTITY FULL: the whole old row
        logical_message("app", b"\x00\xffanything"),
        delete(16404, key("3")),
        delete(16404, row("4"), marker=b"O"),
        commit(0x1_0000_0100, 0x1_0000_0180),
        begin(0x1_0000_0200, 902),
        CLICKS,
        truncate(16404, 16420, options=3),
        commit(0x1_0000_0200, 0x1_0000_0230),
    )
    assert transactions == [
        DecodedTransaction(901, 0x1_0000_0100, 0x1_0000_0180, {"impressions": {1, 2, 200, 5, 3, 4}}, frozenset()),
        DecodedTransaction(902, 0x1_0000_0200, 0x1_0000_0230, {}, frozenset({"impressions", "clicks"})),
    ]


def test_a_transaction_with_nothing_published_is_kept_with_nothing_changed() -> None:
    """pgoutput sends none for it (Postgres 15 and later skip empty transactions), but one sent is not lost."""
    assert decoded(begin(0x10, 4), IMPRESSIONS, insert(16404, row("1")), commit(0x10, 0x18)) == [
        DecodedTransaction(4, 0x10, 0x18, {}, frozenset())
    ]


def test_a_table_outside_public_is_named_with_its_schema() -> None:
    transactions = decoded(
        begin(0x10, 4),
        relation(1, "referral", "click_through_rate", ["day", "id"]),
        relation(2, "", "pg_thing", ["id"]),  # pgoutput sends pg_catalog as an empty namespace
        delete(1, tuple_data(None, "12")),
        delete(2, tuple_data("13")),
        commit(0x10, 0x18),
    )
    assert transactions[0].changed == {"referral.click_through_rate": {12}, "pg_catalog.pg_thing": {13}}


def test_a_binary_id_is_read_as_a_signed_big_endian_integer() -> None:
    transactions = decoded(
        begin(0x10, 4),
        IMPRESSIONS,
        delete(16404, key(struct.pack("!q", 2**40))),
        delete(16404, key(struct.pack("!i", -5))),
        commit(0x10, 0x18),
    )
    assert transactions[0].changed == {"impressions": {2**40, -5}}


def test_a_relation_described_again_replaces_what_was_known_of_it() -> None:
    """After ALTER TABLE the relation is sent again before its next change, with its columns as they now are."""
    transactions = decoded(
        begin(0x10, 4),
        IMPRESSIONS,
        delete(16404, key("1")),
        relation(16404, "public", "impressions", ["extra", "id"]),
        delete(16404, tuple_data(None, "2")),
        commit(0x10, 0x18),
    )
    assert transactions[0].changed == {"impressions": {1, 2}}


def test_relations_are_known_only_within_one_decoding_session() -> None:
    assert decoded(IMPRESSIONS, begin(0x10, 4), commit(0x10, 0x18)) == [
        DecodedTransaction(4, 0x10, 0x18, {}, frozenset())
    ]
    with pytest.raises(ChangeCaptureError, match="relation 16404 was not described"):
        decoded(begin(0x20, 5), delete(16404, key("1")), commit(0x20, 0x28))


def test_transactions_are_yielded_as_each_commit_arrives() -> None:
    """A consumer sees a transaction before the next is read: the stream need not fit in memory."""

    def stream() -> Iterator[bytes]:
        yield from (begin(0x10, 4), IMPRESSIONS, delete(16404, key("1")), commit(0x10, 0x18))
        raise AssertionError("read past the first transaction")

    assert next(decode_transactions(stream())).xid == 4


GOOD = [begin(0x10, 4), IMPRESSIONS, update(16404, row("200"), old=key("2")), commit(0x10, 0x18)]


@pytest.mark.parametrize("position", range(len(GOOD)))
def test_a_message_cut_short_is_an_error_naming_its_type(position: int) -> None:
    message = GOOD[position]
    for length in range(1, len(message)):
        stream = [*GOOD[:position], message[:length], *GOOD[position + 1 :]]
        with pytest.raises(ChangeCaptureError, match=r"malformed pgoutput \w+ message \('[BRUC]'\)"):
            decoded(*stream)


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        pytest.param([b""], "an empty message", id="empty message"),
        pytest.param([b"Z\x00"], "unknown message type 'Z'", id="unknown type"),
        pytest.param([b"S" + struct.pack("!I", 5)], "unknown message type 'S'", id="stream start (protocol 2)"),
        pytest.param([begin(0x10, 4) + b"\x00"], r"Begin message \('B'\): 1 bytes left over", id="trailing bytes"),
        pytest.param([begin(0x10, 4), begin(0x20, 5)], "Begin.*transaction 4 has not committed", id="nested begin"),
        pytest.param([commit(0x10, 0x18)], r"Commit.*outside a transaction", id="commit without begin"),
        pytest.param([IMPRESSIONS, delete(16404, key("1"))], r"Delete.*outside a transaction", id="delete outside"),
        pytest.param([IMPRESSIONS, update(16404, row("1"))], r"Update.*outside a transaction", id="update outside"),
        pytest.param([insert(16404, row("1"))], r"Insert.*outside a transaction", id="insert outside"),
        pytest.param([CLICKS, truncate(16420)], r"Truncate.*outside a transaction", id="truncate outside"),
        pytest.param([begin(0x10, 4), IMPRESSIONS], "transaction 4 has no Commit", id="no commit at the end"),
        pytest.param([begin(0x10, 4), commit(0x11, 0x18)], "commit LSN 0x11 of transaction 4", id="commit lsn"),
        pytest.param([begin(0x10, 4), truncate(16420)], r"Truncate.*relation 16420 was not described", id="unknown"),
        pytest.param([begin(0x10, 4), NO_ID, delete(16430, tuple_data("1", None))], "notes has no column named id"),
        pytest.param([begin(0x10, 4), IMPRESSIONS, delete(16404, key(None))], r"Delete.*id .* is null", id="null"),
        pytest.param(
            [begin(0x10, 4), IMPRESSIONS, update(16404, row(...))], r"Update.*unchanged TOAST value", id="toast id"
        ),
        pytest.param(
            [begin(0x10, 4), IMPRESSIONS, delete(16404, key("x1"))], r"id .* not an integer: b'x1'", id="text id"
        ),
        pytest.param(
            [begin(0x10, 4), IMPRESSIONS, delete(16404, key(b"\x01\x02\x03"))], "binary id .* 3 bytes", id="odd binary"
        ),
        pytest.param(
            [begin(0x10, 4), IMPRESSIONS, delete(16404, tuple_data("1"))], "tuple of 1 columns for impressions, of 3"
        ),
        pytest.param(
            [begin(0x10, 4), IMPRESSIONS, delete(16404, struct.pack("!H", 1) + b"x")], "column 0 has unknown kind 'x'"
        ),
        pytest.param(
            [begin(0x10, 4), IMPRESSIONS, delete(16404, struct.pack("!H", 1) + b"t" + struct.pack("!i", -1))],
            "column 0's value has a negative length",
        ),
        pytest.param([begin(0x10, 4), IMPRESSIONS, delete(16404, key("1"), b"N")], "old tuple marker 'K' or 'O'"),
        pytest.param(
            [begin(0x10, 4), IMPRESSIONS, update(16404, row("1"), key("1"), b"X")], "'K', 'O' or 'N', got 'X'"
        ),
        pytest.param([begin(0x10, 4), IMPRESSIONS, b"I" + struct.pack("!I", 16404) + b"K" + row("1")], "marker 'N'"),
        pytest.param([b"R" + struct.pack("!I", 1) + b"public"], "the namespace has no terminating zero byte"),
        pytest.param([b"Y" + struct.pack("!I", 1) + b"\xff\x00t\x00"], r"Type.*the namespace is not UTF-8"),
        pytest.param([logical_message("p", b"short")[:-2]], r"Message.*cut short reading the content"),
    ],
)
def test_malformed_input_is_an_error_saying_what_was_wrong(messages: list[bytes], error: str) -> None:
    with pytest.raises(ChangeCaptureError, match=error):
        decoded(*messages)


# --- names and positions --------------------------------------------------------------------------------------


def test_a_slot_name_is_the_warehouse_database_in_the_characters_postgres_allows_and_a_hash_of_the_warehouse() -> None:
    # The hashes: `echo -n 'chdb:///a/clickhouse adpipe' | sha256sum`, and the same of `w`.
    assert slot_name("adpipe", "chdb:///a/clickhouse adpipe") == "adpipe_adpipe_7f6b2afe"
    assert slot_name("Prod-EU.warehouse 2", "w") == "adpipe_prod_eu_warehouse_2_50e721e4"
    assert slot_name("Ünïcode", "w") == "adpipe__n_code_50e721e4"
    assert slot_name("x" * 100, "w") == "adpipe_" + "x" * 47 + "_50e721e4"
    assert len(slot_name("x" * 100, "w")) == 63
    assert slot_name("adpipe", "chdb:///a/clickhouse adpipe") != slot_name("adpipe", "chdb:///b/clickhouse adpipe")


def test_a_position_round_trips_through_its_text() -> None:
    assert lsn_value("16/B374D848") == 0x16_B374D848
    assert format_lsn(0x16_B374D848) == "16/B374D848"
    assert format_lsn(0) == "0/0"
    assert format_lsn(lsn_value("0/1A2B")) == "0/1A2B"


def test_what_is_missing_for_change_capture_is_said_in_one_line() -> None:
    assert _reason("logical", 10, "alice", superuser=False, replication=True) is None
    assert _reason("logical", 10, "postgres", superuser=True, replication=False) is None
    assert _reason("replica", 10, "postgres", superuser=True, replication=True) == (
        "change capture is not possible: wal_level is replica, not logical:"
        " run ALTER SYSTEM SET wal_level = logical and restart Postgres"
    )
    both = _reason("replica", 0, "Bob", superuser=False, replication=False)
    assert both is not None and "\n" not in both
    assert "max_replication_slots is 0" in both
    assert 'role Bob lacks the REPLICATION attribute: run ALTER ROLE "Bob" REPLICATION' in both


# --- the slot on the real server ------------------------------------------------------------------------------


@pytest.fixture
def slot(pg: psycopg.Connection, settings: Settings) -> Iterator[str]:
    """This test's slot, after the publication of the source tables; dropped at the end (slots are per server)."""
    name = capture_slot(settings)
    ensure_publication(pg, SOURCE_TABLES)
    assert create_slot(pg, name, wait_seconds=10)
    try:
        yield name
    finally:
        drop_slot(pg, name)


def _in_transaction(pg: psycopg.Connection, *statements: str) -> int:
    """Run `statements` in one transaction; its 32-bit xid, as the Begin message carries it."""
    with pg.transaction():
        for statement in statements:
            pg.execute(statement)
        return pg.execute("SELECT txid_current() % 4294967296").fetchone()[0]


def _wal_position(pg: psycopg.Connection) -> int:
    return lsn_value(pg.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])


def _seed(pg: psycopg.Connection) -> None:
    pg.execute("INSERT INTO advertiser (id, name) VALUES (1, 'a')")
    pg.execute(
        "INSERT INTO campaign (id, name, bid, budget, advertiser_id) VALUES (1, 'c1', 1, 10, 1), (2, 'c2', 1, 10, 1)"
    )
    pg.execute("INSERT INTO clicks (campaign_id) VALUES (1), (2)")


def test_the_slot_returns_each_committed_change_and_advancing_it_drops_what_came_before(
    pg: psycopg.Connection, slot: str
) -> None:
    _seed(pg)
    _in_transaction(pg, "INSERT INTO impressions (campaign_id) SELECT 1 FROM generate_series(1, 5)")  # ids 1 to 5
    updated = _in_transaction(
        pg,
        "UPDATE impressions SET campaign_id = 2 WHERE id = 1",
        "UPDATE impressions SET id = 200 WHERE id = 2",
    )
    after_update = _wal_position(pg)
    deleted = _in_transaction(pg, "DELETE FROM impressions WHERE id = 3")
    after_delete = _wal_position(pg)
    truncated = _in_transaction(pg, "TRUNCATE clicks")
    _in_transaction(pg, "INSERT INTO impressions (campaign_id) VALUES (2)")  # inserts only: no transaction at all

    transactions = list(peek_transactions(pg, slot))
    assert [(t.xid, t.changed, t.truncated) for t in transactions] == [
        (updated, {"impressions": {1, 2, 200}}, frozenset()),
        (deleted, {"impressions": {3}}, frozenset()),
        (truncated, {}, {"clicks"}),
    ]
    first, second, third = transactions
    assert first.commit_lsn < first.end_lsn <= after_update < second.commit_lsn < second.end_lsn <= after_delete
    assert after_delete < third.commit_lsn < third.end_lsn
    assert list(peek_transactions(pg, slot)) == transactions  # peeking consumes nothing

    before = slot_info(pg, slot)
    assert before is not None and before.name == slot and before.wal_status == "reserved"
    assert before.retained_bytes is not None and before.retained_bytes >= 0
    assert before.confirmed_flush_lsn is not None and lsn_value(before.confirmed_flush_lsn) < first.commit_lsn

    advance_slot(pg, slot, first.end_lsn)
    assert list(peek_transactions(pg, slot)) == [second, third]
    advanced = slot_info(pg, slot)
    assert advanced is not None and advanced.confirmed_flush_lsn == format_lsn(first.end_lsn)

    advance_slot(pg, slot, first.commit_lsn)  # backwards: nothing happens (Postgres would refuse)
    advance_slot(pg, slot, first.end_lsn)  # where it is: the same
    assert slot_info(pg, slot) == advanced
    assert list(peek_transactions(pg, slot)) == [second, third]

    advance_slot(pg, slot, third.end_lsn)
    assert list(peek_transactions(pg, slot)) == []
    assert drop_slot(pg, slot) is True
    assert drop_slot(pg, slot) is False
    assert slot_info(pg, slot) is None


def test_a_slot_is_peeked_inside_the_callers_repeatable_read_snapshot_and_leaves_it_open(
    pg: psycopg.Connection, slot: str
) -> None:
    """The snapshot a sync reads the tables in (exported by one connection, imported by others) and the slot can be
    read in one transaction: peeking does not end it or change what it sees. The slot is read from the WAL, not
    through the snapshot: it also returns what committed after the snapshot was taken."""
    _seed(pg)
    before = _in_transaction(pg, "DELETE FROM clicks WHERE campaign_id = 1")
    url = os.environ["ADPIPE_POSTGRES_URL"]
    with psycopg.connect(url) as exporter, psycopg.connect(url) as importer:
        for conn in (exporter, importer):
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
        snapshot = exporter.execute("SELECT pg_export_snapshot()").fetchone()[0]
        importer.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        after = _in_transaction(pg, "INSERT INTO clicks (campaign_id) VALUES (2)", "DELETE FROM clicks WHERE id = 2")
        for conn in (exporter, importer):
            assert [t.xid for t in peek_transactions(conn, slot)] == [before, after]
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            assert conn.execute("SELECT array_agg(id) FROM clicks").fetchone()[0] == [2]  # as of the snapshot
        exporter.rollback()
        importer.rollback()


def test_peeking_on_a_connection_outside_autocommit_leaves_no_transaction_open(
    pg: psycopg.Connection, slot: str
) -> None:
    _seed(pg)
    deleted = _in_transaction(pg, "DELETE FROM clicks")
    with psycopg.connect(os.environ["ADPIPE_POSTGRES_URL"]) as conn:
        assert [t.xid for t in peek_transactions(conn, slot)] == [deleted]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        stopped = peek_transactions(conn, slot)
        next(stopped)
        cursors = "SELECT name FROM pg_cursors"
        assert conn.execute(cursors).fetchall() == [("adpipe_peek",)]  # streamed through a server-side cursor
        stopped.close()  # a consumer that stops early
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert slot_info(conn, slot) is not None
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(cursors).fetchall() == []


def test_a_slot_without_its_publication_is_refused_rather_than_read_as_empty(pg: psycopg.Connection, slot: str) -> None:
    pg.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(PUBLICATION)))
    with pytest.raises(SourceError, match=f"the publication {PUBLICATION} is missing"):
        list(peek_transactions(pg, slot))


def test_a_slot_of_another_database_or_none_at_all_is_one_line(pg: psycopg.Connection, slot: str) -> None:
    other = urlsplit(os.environ["ADPIPE_POSTGRES_URL"])._replace(path="/postgres")
    with psycopg.connect(urlunsplit(other)) as conn, pytest.raises(SourceError, match="not created in this database"):
        list(peek_transactions(conn, slot))
    with pytest.raises(SourceError, match='replication slot "adpipe_none" does not exist'):
        list(peek_transactions(pg, "adpipe_none"))
    with pytest.raises(SourceError, match="cannot advance the replication slot adpipe_none: there is none"):
        advance_slot(pg, "adpipe_none", 1)


def test_the_publication_is_made_to_publish_exactly_the_tables_and_operations_asked(pg: psycopg.Connection) -> None:
    def published() -> tuple[set[str], tuple[bool, ...]]:
        tables = pg.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = %s", (PUBLICATION,))
        flags = pg.execute(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = %s", (PUBLICATION,)
        )
        return {name for (name,) in tables}, flags.fetchone()

    ensure_publication(pg, ["impressions", "clicks"])
    assert published() == ({"impressions", "clicks"}, (False, True, True, True))
    ensure_publication(pg, ["clicks", "impressions"])
    assert published() == ({"impressions", "clicks"}, (False, True, True, True))
    pg.execute(sql.SQL("ALTER PUBLICATION {} SET (publish = 'insert')").format(sql.Identifier(PUBLICATION)))
    ensure_publication(pg, ["advertiser", "public.clicks"])
    assert published() == ({"advertiser", "clicks"}, (False, True, True, True))


def test_creating_a_slot_gives_up_after_its_wait_while_a_writing_transaction_stays_open(
    pg: psycopg.Connection, settings: Settings
) -> None:
    name = capture_slot(settings)
    ensure_publication(pg, SOURCE_TABLES)
    try:
        with psycopg.connect(os.environ["ADPIPE_POSTGRES_URL"]) as writer:
            writer.execute("INSERT INTO advertiser (name) VALUES ('open')")  # has an xid, left open
            started = time.monotonic()
            assert create_slot(pg, name, wait_seconds=1.5) is False
            waited = time.monotonic() - started
            assert 1.5 <= waited < 2.5
            assert slot_info(pg, name) is None  # nothing half-made is left
            writer.rollback()
        assert create_slot(pg, name, wait_seconds=10) is True
    finally:
        drop_slot(pg, name)


def test_the_wait_is_bounded_in_total_when_writing_transactions_end_one_after_another(
    pg: psycopg.Connection, settings: Settings
) -> None:
    """Each transaction that ends lets the server wait on the next: the bound is on the whole call, not each wait
    (lock_timeout alone would give up 1.2 s after the second ended, 2.8 s in)."""
    name = capture_slot(settings)
    writers = [psycopg.connect(os.environ["ADPIPE_POSTGRES_URL"]) for _ in range(3)]
    for writer in writers:
        writer.execute("INSERT INTO advertiser (name) VALUES ('open')")

    def end_all_but_the_last() -> None:
        for writer in writers[:-1]:
            time.sleep(0.8)
            writer.commit()

    ender = threading.Thread(target=end_all_but_the_last)
    ender.start()
    try:
        started = time.monotonic()
        assert create_slot(pg, name, wait_seconds=1.2) is False
        assert time.monotonic() - started < 2.2
    finally:
        ender.join()
        for writer in writers:
            writer.close()
        drop_slot(pg, name)


@pytest.fixture
def role_without_replication(pg: psycopg.Connection) -> Iterator[str]:
    """A login role that is neither superuser nor REPLICATION, and its URL to this test's database."""
    role = f"adpipe_t_{uuid.uuid4().hex[:10]}"
    pg.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'test-only'").format(sql.Identifier(role)))
    url = urlsplit(os.environ["ADPIPE_POSTGRES_URL"])
    try:
        yield urlunsplit(url._replace(netloc=f"{role}:test-only@{url.hostname}:{url.port}"))
    finally:
        pg.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        pg.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_that_cannot_capture_changes_is_told_what_to_grant_in_one_line(
    pg: psycopg.Connection, role_without_replication: str, settings: Settings
) -> None:
    assert unsupported_reason(pg) is None  # the superuser
    role = urlsplit(role_without_replication).username
    with psycopg.connect(role_without_replication) as conn:
        assert unsupported_reason(conn) == (
            f"change capture is not possible: role {role} lacks the REPLICATION attribute:"
            f" run ALTER ROLE {role} REPLICATION"
        )
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with pytest.raises(SourceError, match=r"permission denied for database .* CREATE on the database"):
            ensure_publication(conn, ["impressions"])
        ensure_publication(pg, ["impressions"])
        with pytest.raises(SourceError, match=r"must be owner of publication adpipe; the role must own the tables"):
            ensure_publication(conn, ["clicks"])
        slot = capture_slot(settings)
        with pytest.raises(SourceError, match=rf"cannot create the replication slot {slot}: .*ALTER ROLE {role} REPL"):
            create_slot(conn, slot, wait_seconds=1)
        with pytest.raises(SourceError, match=r"cannot read the replication slot .*REPLICATION") as refused:
            list(peek_transactions(conn, slot))
        assert "\n" not in str(refused.value)
