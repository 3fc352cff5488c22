"""The sync against the real embedded Postgres and the real ClickHouse engine (chDB).

Expected values are either literals written here for hand-built rows, or counted in Postgres —
the source of truth — with plain SQL that shares no code with the sync.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from unittest.mock import ANY

import psycopg
import pytest

from pipeline.config import Settings
from pipeline.errors import AdpipeError, SyncRefusedError
from pipeline.locks import exclusive_lock
from pipeline.options import Engine, Mode, OnReset
from pipeline.source.generate import Generator
from pipeline.sync.gaps import missing_ranges
from pipeline.sync.run import SyncOptions, replay, sync
from pipeline.sync.stage import list_runs
from pipeline.sync.state import STATE_FILE, load_state
from pipeline.warehouse import client as clickhouse
from tests.conftest import run_cli
from tests.harness import wait_until

pytestmark = pytest.mark.warehouses  # each test that uses `settings` runs on chdb, http and server


def full(settings: Settings, **kw: object) -> None:
    sync(settings, SyncOptions(mode=Mode.FULL, **kw))


def incremental(settings: Settings, **kw: object) -> None:
    sync(settings, SyncOptions(mode=Mode.INCREMENTAL, **kw))


def ch(settings: Settings, sql: str) -> list[tuple]:
    return clickhouse.connect(settings).query(sql).result_rows


def per_campaign_pg(pg: psycopg.Connection, table: str) -> dict[int, int]:
    rows = pg.execute(f"SELECT campaign_id, count(*) FROM {table} WHERE campaign_id IS NOT NULL GROUP BY 1")
    return dict(rows.fetchall())


def per_campaign_ch(settings: Settings, table: str) -> dict[int, int]:
    return dict(ch(settings, f"SELECT campaign_id, count() FROM {table} GROUP BY campaign_id"))


def aggregate_ch(settings: Settings, column: str) -> dict[int, int]:
    """Per-campaign totals from the materialized-view aggregates, summed as KPI queries do."""
    return dict(ch(settings, f"SELECT campaign_id, sum({column}) FROM campaign_daily GROUP BY campaign_id"))


def quarantine_ch(settings: Settings) -> list[tuple[str, int, str]]:
    """The rows set aside now: (source table, source id, reason), in that order."""
    return ch(settings, "SELECT table_name, source_id, reason FROM quarantine FINAL ORDER BY table_name, source_id")


def seed_hand_built(pg: psycopg.Connection) -> None:
    """Two advertisers; campaign 1 has 3 impressions and 2 clicks, campaign 2 has 1 impression, campaign 3 none."""
    pg.execute("INSERT INTO advertiser (name, updated_at) VALUES ('Acme', now()), ('Globex', now())")
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id) VALUES "
        "('Spring', 1.50, 100.00, '2026-11-01', '2026-11-30', 1), "
        "('Summer', 2.00, 200.00, '2026-11-01', '2026-11-30', 1), "
        "('Autumn', 0.75, 50.00, '2026-11-01', '2026-11-30', 2)"
    )
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at) VALUES "
        "(1, '2026-11-20 10:00:00'), (1, '2026-11-20 23:59:59.999999'), (1, '2026-11-21 00:00:00'), "
        "(2, '2026-11-21 08:30:00')"
    )
    pg.execute(
        "INSERT INTO clicks (campaign_id, created_at) VALUES (1, '2026-11-20 10:00:30'), (1, '2026-11-21 00:01:00')"
    )


def test_full_sync_of_hand_built_rows(settings: Settings, pg: psycopg.Connection) -> None:
    seed_hand_built(pg)
    full(settings)
    assert per_campaign_ch(settings, "impressions") == {1: 3, 2: 1}
    assert per_campaign_ch(settings, "clicks") == {1: 2}
    assert sorted(
        ch(
            settings,
            "SELECT campaign_id, day, sum(impressions), sum(clicks) FROM campaign_daily GROUP BY campaign_id, day",
        )
    ) == [
        (1, date(2026, 11, 20), 2, 1),
        (1, date(2026, 11, 21), 1, 1),
        (2, date(2026, 11, 21), 1, 0),
    ]
    assert ch(settings, "SELECT id, name, toString(bid) FROM campaign FINAL ORDER BY id") == [
        (1, "Spring", "1.5"),
        (2, "Summer", "2"),
        (3, "Autumn", "0.75"),
    ]
    assert ch(settings, "SELECT count() FROM quarantine FINAL") == [(0,)]


def test_rows_with_ids_below_1_go_to_quarantine_on_every_run_and_leave_it_when_deleted(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """SERIAL ids start at 1, but the source takes any id written explicitly, and the warehouse keys rows by
    unsigned ids: a row below 1 is set aside with its reason, never dropped, whether it was there at the full sync
    or written after it; the id at the top of the type is an ordinary row."""
    from pipeline.analytics.reconcile import reconcile

    seed_hand_built(pg)
    pg.execute("INSERT INTO advertiser (id, name) VALUES (0, 'Zero')")
    pg.execute(
        "INSERT INTO campaign (id, name, bid, budget, advertiser_id) VALUES (-3, 'Minus', 1, 1, 1), (4, 'On', 1, 1, 0)"
    )
    pg.execute(
        "INSERT INTO impressions (id, campaign_id, created_at) VALUES (0, 1, '2026-11-20 11:00:00'),"
        " (-5, 2, '2026-11-20 12:00:00'), (2147483647, 2, '2026-11-20 13:00:00'), (7, -3, '2026-11-20 14:00:00')"
    )
    pg.execute("INSERT INTO clicks (id, campaign_id, created_at) VALUES (-1, 1, '2026-11-20 11:00:30')")
    full(settings)
    assert per_campaign_ch(settings, "impressions") == {1: 3, 2: 2}  # ids 1-3; 4 and 2147483647
    assert per_campaign_ch(settings, "clicks") == {1: 2}
    assert quarantine_ch(settings) == [
        ("advertiser", 0, "id below 1"),
        ("campaign", -3, "id below 1"),
        ("campaign", 4, "campaign without advertiser"),
        ("clicks", -1, "id below 1"),
        ("impressions", -5, "id below 1"),
        ("impressions", 0, "id below 1"),
        ("impressions", 7, "campaign_id below 1"),
    ]
    assert reconcile(settings).ok
    # Written after the full sync, below every synced id; and one set aside before, deleted.
    pg.execute("INSERT INTO impressions (id, campaign_id, created_at) VALUES (-7, 1, '2026-11-21 09:00:00')")
    pg.execute("DELETE FROM impressions WHERE id = -5")
    result = sync(settings, SyncOptions(mode=Mode.INCREMENTAL))
    assert result.tables["impressions"].quarantined == 1  # -7; 0 is in quarantine already
    assert per_campaign_ch(settings, "impressions") == {1: 3, 2: 2}
    assert [row[1:] for row in quarantine_ch(settings) if row[0] == "impressions"] == [
        (-7, "id below 1"),
        (0, "id below 1"),
        (7, "campaign_id below 1"),
    ]
    assert reconcile(settings).ok
    # Nothing changed: nothing set aside again.
    result = sync(settings, SyncOptions(mode=Mode.INCREMENTAL))
    assert {table: summary.quarantined for table, summary in result.tables.items()} == dict.fromkeys(result.tables, 0)


def test_dates_and_times_the_warehouse_cannot_hold_go_to_quarantine_and_infinity_too(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """Facts are counted per day and hour from 1970 on; dimension times must fit DateTime64 (1900 to 2300) and campaign
    dates ClickHouse's Date (1970 to 2149-06-06), where an insert of another date fails. Postgres' infinities fit
    nothing. Each such row is set aside with its reason, spelled out in its JSON as far as it can be; a fact moved
    into or out of range by an update follows."""
    from pipeline.analytics.reconcile import reconcile

    seed_hand_built(pg)
    pg.execute(
        "INSERT INTO advertiser (name, created_at) VALUES ('Old', '1899-12-31 23:59:59'), ('Epoch', '1969-12-31 23:00')"
    )
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id) VALUES"
        " ('Sixties', 1, 1, '1969-12-31', '2026-12-31', 1), ('Open', 1, 1, '2026-11-01', 'infinity', 1),"
        " ('Late', 1, 1, '2026-11-01', '2149-06-06', 2)"
    )
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at) VALUES (1, '1969-12-31 23:59:59.999999'),"
        " (1, '-infinity'), (2, 'infinity'), (2, '1970-01-01 00:00:00')"
    )
    full(settings)
    assert quarantine_ch(settings) == [
        ("advertiser", 3, "created_at out of range"),
        ("campaign", 4, "start_date out of range"),
        ("campaign", 5, "end_date out of range"),
        ("impressions", 5, "created_at out of range"),
        ("impressions", 6, "created_at out of range"),
        ("impressions", 7, "created_at out of range"),
    ]
    assert ch(settings, "SELECT id FROM current_advertiser ORDER BY id") == [(1,), (2,), (4,)]
    assert ch(settings, "SELECT id, end_date FROM current_campaign WHERE id = 6") == [(6, date(2149, 6, 6))]
    assert ch(settings, "SELECT id, toString(created_at) FROM impressions WHERE id > 4") == [
        (8, "1970-01-01 00:00:00.000000")
    ]
    (row,) = ch(settings, "SELECT row FROM quarantine FINAL WHERE table_name = 'campaign' AND source_id = 5")[0]
    assert json.loads(row) | {"created_at": None} == {
        "id": 5,
        "name": "Open",
        "bid": "1.00",
        "budget": "1.00",
        "start_date": "2026-11-01",
        "end_date": None,  # infinity
        "advertiser_id": 1,
        "updated_at": None,
        "created_at": None,
    }
    assert reconcile(settings).ok
    # Moved out of range, and back into it.
    pg.execute("UPDATE impressions SET created_at = '-infinity' WHERE id = 1")
    pg.execute("UPDATE impressions SET created_at = '2026-11-22 10:00:00' WHERE id = 5")
    incremental(settings)
    assert [row[1] for row in quarantine_ch(settings) if row[0] == "impressions"] == [1, 6, 7]
    assert ch(settings, "SELECT id FROM impressions ORDER BY id") == [(2,), (3,), (4,), (5,), (8,)]
    assert reconcile(settings).ok


def test_a_newest_fact_dated_beyond_python_is_quarantined_and_the_next_runs_go_on(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """The run keeps the time of the newest row it synced, to tell it from another row under the same id later.
    Read as a Python datetime, a time before year 1 or past 9999 failed every sync until the row was deleted."""
    seed_hand_built(pg)
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (1, '0044-03-15 12:00:00 BC')")  # id 5
    full(settings)
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (1, '12000-01-01 00:00:00')")  # id 3
    incremental(settings)
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-22 10:00:00')")  # id 6
    incremental(settings)
    assert quarantine_ch(settings) == [
        ("clicks", 3, "created_at out of range"),
        ("impressions", 5, "created_at out of range"),
    ]
    assert ch(settings, "SELECT max(id) FROM impressions") == [(6,)]
    state = load_state(settings.home)
    assert (state.facts["impressions"].anchor_created_at, state.facts["clicks"].anchor_created_at) == (
        "2026-11-22T10:00:00",
        "12000-01-01 00:00:00",
    )


def test_a_source_without_a_table_or_column_the_sync_reads_stops_it_in_one_line(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """Columns added or retyped do not matter (types are cast, and what does not fit is quarantined); one missing
    is named before anything is read, instead of the driver's error on the first read of it."""
    seed_hand_built(pg)
    full(settings)
    pg.execute("ALTER TABLE campaign ADD COLUMN note text, ALTER COLUMN bid TYPE text")
    incremental(settings)
    url = re.sub(r":[^:@/]*@", ":***@", settings.postgres_url or "")
    for change, problem in (
        ("ALTER TABLE impressions RENAME COLUMN created_at TO ts", "table impressions has no column created_at"),
        ("ALTER TABLE impressions RENAME TO impression", "no table impressions"),
    ):
        pg.execute(change)
        for mode in ("incremental", "full"):
            result = run_cli("sync", "--mode", mode)
            assert (result.exit_code, result.stderr) == (
                1,
                f"error: the source Postgres at {url}: {problem}, which adpipe reads"
                " (the source schema: schemas/postgres/V1__create_schema.sql)\n",
            )


def test_a_fact_set_aside_as_in_the_future_is_loaded_once_the_source_clock_reaches_it(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer's clock ahead of the database's puts a row in the future, for a while: nothing changes the row when
    its time comes, so each incremental run compares the rows set aside for it again. (The 5-minute tolerance is set
    to 0 here, so that the test waits a second, not minutes.)"""
    from pipeline.analytics.reconcile import reconcile
    from pipeline.sync import clean

    monkeypatch.setattr(clean, "FUTURE_TOLERANCE", timedelta(0))
    seed_hand_built(pg)
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at) VALUES (2, now() AT TIME ZONE 'UTC' + interval '1 second')"
    )
    (due,) = pg.execute("SELECT created_at FROM impressions WHERE id = 5").fetchone()
    full(settings)
    assert quarantine_ch(settings) == [("impressions", 5, "created_at in the future")]
    assert per_campaign_ch(settings, "impressions") == {1: 3, 2: 1}
    wait_until(lambda: pg.execute("SELECT now() AT TIME ZONE 'UTC' > %s", (due,)).fetchone()[0], 10, "the row's time")
    result = sync(settings, SyncOptions(mode=Mode.INCREMENTAL))
    assert (result.tables["impressions"].loaded, result.tables["impressions"].quarantined) == (1, 0)
    assert quarantine_ch(settings) == []
    assert per_campaign_ch(settings, "impressions") == {1: 3, 2: 2}
    assert reconcile(settings).ok


def test_a_warehouse_emptied_or_replaced_stops_the_incremental_sync_until_replayed(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """A warehouse without the last run this home committed (a new server, a lost volume, an older backup): an
    incremental run would add the newest rows to a warehouse lacking what came before them, and exit 0. It stops in
    one line; replay loads the staged runs into it, and the syncs go on from there. With --on-reset full, a full sync
    runs instead."""
    from pipeline.analytics.reconcile import reconcile

    seed_hand_built(pg)
    full(settings)
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")
    incremental(settings)

    def empty_the_warehouse() -> None:
        clickhouse.connect(settings).command(f"DROP DATABASE {settings.clickhouse_database} SYNC")
        clickhouse.close_all()  # the next command opens it again, and creates the database

    empty_the_warehouse()
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-22 09:00:00')")
    last = load_state(settings.home).last_run_id
    result = run_cli("sync")
    assert (result.exit_code, result.stderr) == (
        1,
        f"error: the warehouse has no record of run {last}, the last this home committed: it was emptied, replaced"
        " or restored from an earlier backup; run `adpipe replay` to load the staged runs into it, then sync, or"
        " `adpipe sync --mode full`\n",
    )
    assert per_campaign_ch(settings, "impressions") == {}
    assert run_cli("sync").stderr == result.stderr  # the refused run's own record is no history
    assert run_cli("replay").exit_code == 0
    assert (per_campaign_ch(settings, "impressions"), per_campaign_ch(settings, "clicks")) == (
        {1: 3, 2: 1},
        {1: 2, 2: 1},
    )
    incremental(settings)
    assert per_campaign_ch(settings, "impressions") == {1: 3, 2: 2}
    assert reconcile(settings).ok
    # Restored from a backup taken before the last run: its rows and its record are gone, the earlier runs' stay.
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (1, '2026-11-23 09:00:00')")
    incremental(settings)
    last = load_state(settings.home).last_run_id
    client = clickhouse.connect(settings)
    for statement in ("DELETE FROM clicks WHERE id = 4", f"DELETE FROM sync_runs WHERE run_id = '{last}'"):
        client.command(statement, settings={"mutations_sync": 1})
    restored = run_cli("sync")
    assert restored.exit_code == 1
    assert restored.stderr.startswith(f"error: the warehouse has no record of run {last}, the last this home")
    assert run_cli("replay").exit_code == 0
    assert reconcile(settings).ok
    empty_the_warehouse()
    incremental(settings, on_reset=OnReset.FULL)
    assert (per_campaign_ch(settings, "impressions"), per_campaign_ch(settings, "clicks")) == (
        {1: 3, 2: 2},
        {1: 3, 2: 1},
    )
    assert reconcile(settings).ok


def test_reconcile_says_when_the_staged_runs_lost_the_full_run_they_build_on(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """The staging directory emptied by hand: syncs go on staging their runs, but these no longer reach back to a
    full run, so there is no snapshot to recompute the KPIs from. Reconcile says so, and what restores one."""
    from pipeline.analytics.reconcile import reconcile

    seed_hand_built(pg)
    full(settings)
    shutil.rmtree(settings.staging_dir)
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")
    incremental(settings)
    with pytest.raises(AdpipeError) as refused:
        reconcile(settings)
    assert str(refused.value) == (
        f"the staged runs in {settings.staging_dir} do not reach back to the full run the warehouse builds on"
        " (deleted, or another staging directory): run `adpipe sync --mode full` to stage a complete snapshot"
    )
    full(settings)
    assert reconcile(settings).ok


def test_full_sync_of_generated_data_equals_postgres(settings: Settings, pg: psycopg.Connection) -> None:
    Generator(pg, seed=7).batch(advertisers=3, campaigns=4, impressions=500, ctr=0.1)
    full(settings, chunk_rows=700)  # several chunks per table, with parallel partitions
    for table in ("impressions", "clicks"):
        expected = per_campaign_pg(pg, table)
        assert per_campaign_ch(settings, table) == expected
        assert aggregate_ch(settings, table) == expected
    assert ch(settings, "SELECT count() FROM impressions") == [(3 * 4 * 500,)]


def test_incremental_picks_up_new_batches_only_once(settings: Settings, pg: psycopg.Connection) -> None:
    generator = Generator(pg, seed=1)
    generator.batch(advertisers=2, campaigns=2, impressions=300, ctr=0.1)
    full(settings)
    generator.batch(advertisers=1, campaigns=2, impressions=200, ctr=0.2)
    incremental(settings, chunk_rows=150)
    incremental(settings)  # nothing new: must not double anything
    assert ch(settings, "SELECT count() FROM impressions") == [(2 * 2 * 300 + 2 * 200,)]
    assert ch(settings, "SELECT sum(impressions), sum(clicks) FROM campaign_daily") == [(1600, 2 * 2 * 30 + 2 * 40)]
    assert per_campaign_ch(settings, "clicks") == per_campaign_pg(pg, "clicks")
    assert ch(settings, "SELECT count() FROM advertiser FINAL") == [(3,)]


def test_transaction_committing_below_the_high_water_mark_is_not_lost(
    settings: Settings, pg: psycopg.Connection
) -> None:
    seed_hand_built(pg)
    full(settings)
    slow = psycopg.connect(pg.info.dsn)
    slow.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")  # id 5
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-21 09:30:00')")  # id 6
    incremental(settings)
    assert ch(settings, "SELECT id FROM impressions ORDER BY id") == [(1,), (2,), (3,), (4,), (6,)]
    assert [(g.lo, g.hi) for g in load_state(settings.home).facts["impressions"].gaps] == [(5, 5)]
    slow.commit()
    slow.close()
    incremental(settings)
    incremental(settings)
    assert ch(settings, "SELECT id FROM impressions ORDER BY id") == [(1,), (2,), (3,), (4,), (5,), (6,)]
    assert aggregate_ch(settings, "impressions") == {1: 3, 2: 3}
    assert load_state(settings.home).facts["impressions"].gaps == []


def start_commit_behind_a_later_xid(pg: psycopg.Connection) -> tuple[psycopg.Connection, int]:
    """After `seed_hand_built`: impression 6 committed by a transaction H, impression 5 held open by T, whose
    transaction id t is larger than H's. Returns T's connection (its transaction open) and t.

    pg_current_snapshot()'s xmax is one past the latest *completed* transaction id, here H's: T is running
    with an id at or above that xmax, so it is neither below xmax nor listed in xip.
    """
    first = psycopg.connect(pg.info.dsn)  # H
    slow = psycopg.connect(pg.info.dsn)  # T
    first.execute("INSERT INTO advertiser (name) VALUES ('Initech')")  # H is assigned its transaction id h first
    slow.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")  # id 5
    first.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-21 09:30:00')")  # id 6
    h = int(first.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
    t = int(slow.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
    assert t > h
    first.commit()
    first.close()
    return slow, t


def snapshot_xmax(settings: Settings) -> int:
    """The xmax of the snapshot the last staged run read (`xmin:xmax:xip` in its manifest)."""
    return int(list_runs(settings.staging_dir)[-1].manifest["source"]["snapshot"].split(":")[1])


def test_gap_stays_open_while_a_transaction_above_the_snapshot_xmax_runs(
    settings: Settings, pg: psycopg.Connection
) -> None:
    seed_hand_built(pg)
    full(settings)
    slow, t = start_commit_behind_a_later_xid(pg)
    incremental(settings)
    # The case this covers: T's id is not below the snapshot's xmax (so xmax says nothing about T).
    assert snapshot_xmax(settings) <= t
    assert ch(settings, "SELECT id FROM impressions ORDER BY id") == [(1,), (2,), (3,), (4,), (6,)]
    incremental(settings)  # T still open: its id 5 may yet commit, so the gap must stay
    assert [(g.lo, g.hi) for g in load_state(settings.home).facts["impressions"].gaps] == [(5, 5)]
    slow.commit()
    slow.close()
    incremental(settings)
    assert ch(settings, "SELECT id FROM impressions ORDER BY id") == [(1,), (2,), (3,), (4,), (5,), (6,)]
    assert per_campaign_ch(settings, "impressions") == per_campaign_pg(pg, "impressions") == {1: 3, 2: 3}
    assert aggregate_ch(settings, "impressions") == {1: 3, 2: 3}
    assert load_state(settings.home).facts["impressions"].gaps == []


def test_gap_from_an_older_state_file_is_rechecked_with_a_bound_of_its_own(
    settings: Settings, pg: psycopg.Connection
) -> None:
    seed_hand_built(pg)
    full(settings)
    slow, t = start_commit_behind_a_later_xid(pg)
    incremental(settings)
    # The state as adpipe wrote it before gaps had a bound: the snapshot's xmax, which would close it at once.
    path = settings.home / STATE_FILE
    state = json.loads(path.read_text())
    assert state["facts"]["impressions"]["gaps"] == [{"lo": 5, "hi": 5, "xid_bound": ANY}]
    state["facts"]["impressions"]["gaps"] = [{"lo": 5, "hi": 5, "xmax": 1}]
    path.write_text(json.dumps(state))
    incremental(settings)  # T still open
    (gap,) = load_state(settings.home).facts["impressions"].gaps
    assert (gap.lo, gap.hi) == (5, 5)
    assert gap.xid_bound == list_runs(settings.staging_dir)[-1].manifest["source"]["xid_bound"]
    assert gap.xid_bound > t  # taken after T had its transaction id
    slow.commit()
    slow.close()
    incremental(settings)
    assert ch(settings, "SELECT id FROM impressions ORDER BY id") == [(1,), (2,), (3,), (4,), (5,), (6,)]
    assert load_state(settings.home).facts["impressions"].gaps == []


def test_rolled_back_ids_are_forgotten_once_no_transaction_can_fill_them(
    settings: Settings, pg: psycopg.Connection
) -> None:
    seed_hand_built(pg)
    with pg.transaction(force_rollback=True):
        pg.execute(
            "INSERT INTO clicks (campaign_id, created_at) VALUES (1, '2026-11-21 00:02:00')"
        )  # id 3, rolled back
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-21 08:31:00')")  # id 4
    full(settings)
    # Nothing was in flight when the full sync read: the hole at id 3 is for good, and no gap is kept for it.
    assert load_state(settings.home).facts["clicks"].gaps == []
    incremental(settings)
    assert load_state(settings.home).facts["clicks"].gaps == []
    assert ch(settings, "SELECT id FROM clicks ORDER BY id") == [(1,), (2,), (4,)]


class Crash(BaseException):
    """Stands in for the process dying: not an Exception, so nothing on the way catches it."""


def run_record(settings: Settings, run_id: str) -> list[tuple]:
    """What sync_runs says of one run: (table, status, rows loaded) per table."""
    query = "SELECT table_name, status, rows_loaded FROM sync_runs FINAL WHERE run_id = {run_id:String} ORDER BY 1"
    return clickhouse.connect(settings).query(query, parameters={"run_id": run_id}).result_rows


def crash_before_commit(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """An incremental sync that dies after loading, before its commit; the real commit is back afterwards."""
    import pipeline.sync.execute as sync_module

    real_commit = sync_module.commit

    def crash(*_args: object) -> None:
        raise Crash

    monkeypatch.setattr(sync_module, "commit", crash)
    with pytest.raises(Crash):
        incremental(settings)
    monkeypatch.setattr(sync_module, "commit", real_commit)


def test_crash_between_load_and_state_write_converges_without_doubling(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = Generator(pg, seed=3)
    generator.batch(advertisers=1, campaigns=2, impressions=100, ctr=0.1)
    full(settings)
    generator.batch(advertisers=1, campaigns=1, impressions=50, ctr=0.2)
    crash_before_commit(settings, monkeypatch)
    assert ch(settings, "SELECT count() FROM impressions") == [(250,)]  # loaded, but not committed
    (crashed,) = ch(settings, "SELECT DISTINCT run_id FROM sync_runs FINAL WHERE status = 'failed'")[0]
    incremental(settings)  # loads the pending run again (deduplicated), commits, then syncs
    assert ch(settings, "SELECT count() FROM impressions") == [(250,)]
    assert ch(settings, "SELECT sum(impressions), sum(clicks) FROM campaign_daily") == [(250, 2 * 10 + 10)]
    assert ch(settings, "SELECT count() FROM clicks") == [(30,)]
    # The run that failed after loading is committed now, and sync_runs says so, with what it loaded.
    assert run_record(settings, crashed) == [
        ("advertiser", "recovered", 1),
        ("campaign", "recovered", 1),
        ("clicks", "recovered", 10),
        ("impressions", "recovered", 50),
    ]


def test_a_run_staged_before_manifests_had_a_summary_is_recorded_with_what_it_loaded(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.sync.stage import MANIFEST

    generator = Generator(pg, seed=4)
    generator.batch(advertisers=1, campaigns=1, impressions=100, ctr=0.1)
    full(settings)
    generator.batch(advertisers=1, campaigns=1, impressions=40, ctr=0.25)
    crash_before_commit(settings, monkeypatch)
    pending = list_runs(settings.staging_dir)[-1]
    manifest = json.loads((pending.directory / MANIFEST).read_text())
    del manifest["summary"]  # as an older adpipe wrote it
    (pending.directory / MANIFEST).write_text(json.dumps(manifest))
    incremental(settings)
    assert run_record(settings, pending.run_id) == [
        ("advertiser", "recovered", 1),
        ("campaign", "recovered", 1),
        ("clicks", "recovered", 10),
        ("impressions", "recovered", 40),
    ]


def test_a_run_killed_before_recording_its_end_is_marked_interrupted(
    settings: Settings, pg: psycopg.Connection
) -> None:
    from datetime import UTC, datetime

    from pipeline.sync.runlog import INTERRUPTED, SyncResult, record
    from pipeline.warehouse.schema import apply_schema

    Generator(pg, seed=5).batch(advertisers=1, campaigns=1, impressions=10, ctr=0.1)
    # What a SIGKILLed sync leaves: its rows say `running`, nothing was published.
    client = clickhouse.connect(settings)
    apply_schema(client)
    killed = SyncResult("20260101T000000000000Z-full", "full")
    record(client, killed, datetime(2026, 1, 1, tzinfo=UTC), "running")
    assert sync(settings, SyncOptions(mode=Mode.FULL)).interrupted == [killed.run_id]
    ended = f"SELECT DISTINCT status, finished_at IS NULL, error FROM sync_runs FINAL WHERE run_id = '{killed.run_id}'"
    assert ch(settings, ended) == [("interrupted", True, INTERRUPTED)]
    assert ch(settings, "SELECT DISTINCT status FROM sync_runs FINAL ORDER BY status") == [
        ("interrupted",),
        ("success",),
    ]


def test_campaign_renamed_without_updated_at_and_advertiser_deleted(settings: Settings, pg: psycopg.Connection) -> None:
    seed_hand_built(pg)
    pg.execute("INSERT INTO advertiser (name) VALUES ('Initech')")  # id 3, no campaigns
    full(settings)
    pg.execute("UPDATE campaign SET name = 'Spring Sale' WHERE id = 1")  # updated_at left alone
    pg.execute("DELETE FROM advertiser WHERE id = 3")
    incremental(settings)
    assert ch(settings, "SELECT id, name FROM campaign FINAL ORDER BY id") == [
        (1, "Spring Sale"),
        (2, "Summer"),
        (3, "Autumn"),
    ]
    assert ch(settings, "SELECT id, name FROM advertiser FINAL WHERE is_deleted = 0 ORDER BY id") == [
        (1, "Acme"),
        (2, "Globex"),
    ]


def test_bad_rows_are_quarantined_with_reasons(settings: Settings, pg: psycopg.Connection) -> None:
    seed_hand_built(pg)
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id) VALUES "
        "('Orphan', 1.00, 10.00, NULL, NULL, NULL), "  # id 4
        "('Free', 0.00, 10.00, NULL, NULL, 1), "  # id 5
        "('Broke', 1.00, -5.00, NULL, NULL, 1), "  # id 6
        "('Backwards', 1.00, 10.00, '2026-11-10', '2026-11-01', 1)"  # id 7
    )
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at) VALUES "
        "(NULL, '2026-11-20 10:00:00'), (1, now() AT TIME ZONE 'UTC' + interval '1 day')"  # ids 5, 6
    )
    full(settings)
    assert quarantine_ch(settings) == [
        ("campaign", 4, "campaign without advertiser"),
        ("campaign", 5, "bid <= 0"),
        ("campaign", 6, "budget <= 0"),
        ("campaign", 7, "end_date before start_date"),
        ("impressions", 5, "campaign_id is NULL"),
        ("impressions", 6, "created_at in the future"),
    ]
    assert ch(settings, "SELECT count() FROM impressions") == [(4,)]
    assert ch(settings, "SELECT count() FROM campaign FINAL") == [(3,)]
    # Fixing a campaign in Postgres resolves its quarantine entry and loads it.
    pg.execute("UPDATE campaign SET advertiser_id = 2 WHERE id = 4")
    incremental(settings)
    assert ch(settings, "SELECT source_id FROM quarantine FINAL WHERE table_name = 'campaign' ORDER BY 1") == [
        (5,),
        (6,),
        (7,),
    ]
    assert ch(settings, "SELECT count() FROM campaign FINAL") == [(4,)]
    staged = json.loads((list_runs(settings.staging_dir)[0].directory / "manifest.json").read_text())
    assert staged["tables"]["quarantine"]["rows"] == 6


def test_a_row_breaking_several_rules_is_quarantined_for_the_first_in_the_documented_order(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """docs/design.md, Clean: facts check campaign_id, then created_at NULL, then the future; campaigns check the
    advertiser (missing, or itself invalid), then bid, then budget, then the dates. One entry per row, the first."""
    seed_hand_built(pg)
    pg.execute("INSERT INTO advertiser (name) VALUES ('   ')")  # id 3: advertiser name is empty
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id) VALUES "
        "('All four', 0.00, -1.00, '2026-11-10', '2026-11-01', NULL), "  # id 4
        "('Invalid owner', 0.00, 10.00, NULL, NULL, 3), "  # id 5
        "('Bid, budget, dates', 0.00, 0.00, '2026-11-10', '2026-11-01', 1), "  # id 6
        "('Budget, dates', 1.00, -1.00, '2026-11-10', '2026-11-01', 1)"  # id 7
    )
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at) VALUES "
        "(NULL, NULL), "  # id 5
        "(NULL, now() AT TIME ZONE 'UTC' + interval '1 day'), "  # id 6
        "(1, NULL)"  # id 7
    )
    full(settings)
    assert quarantine_ch(settings) == [
        ("advertiser", 3, "advertiser name is empty"),
        ("campaign", 4, "campaign without advertiser"),
        ("campaign", 5, "campaign without advertiser"),
        ("campaign", 6, "bid <= 0"),
        ("campaign", 7, "budget <= 0"),
        ("impressions", 5, "campaign_id is NULL"),
        ("impressions", 6, "campaign_id is NULL"),
        ("impressions", 7, "created_at is NULL"),
    ]
    assert ch(settings, "SELECT id FROM campaign FINAL ORDER BY id") == [(1,), (2,), (3,)]
    assert ch(settings, "SELECT id FROM impressions ORDER BY id") == [(1,), (2,), (3,), (4,)]


def test_created_at_up_to_five_minutes_past_the_snapshot_clock_is_valid() -> None:
    """The future rule to the second (and the microsecond): `now` is the snapshot's `taken_at`, the Postgres
    clock as the run read it, passed to `clean_facts` as it is here; exactly now + 5 min is still valid."""
    from datetime import datetime, timedelta

    import pyarrow as pa

    from pipeline.sync.clean import clean_facts

    now = datetime(2026, 11, 20, 12, 0, 0)
    five = timedelta(minutes=5)
    times = [
        now + five - timedelta(seconds=1),  # id 1
        now + five,  # id 2
        now + five + timedelta(microseconds=1),  # id 3
        now + five + timedelta(seconds=1),  # id 4
        now - timedelta(days=1),  # id 5
    ]
    rows = pa.table(
        {
            "id": pa.array([1, 2, 3, 4, 5], pa.int32()),
            "campaign_id": pa.array([1] * 5, pa.int32()),
            "created_at": pa.array(times, pa.timestamp("us")),
        }
    )
    cleaned = clean_facts("impressions", rows, now)
    assert cleaned.valid["id"].to_list() == [1, 2, 5]
    assert cleaned.quarantined.select("source_id", "reason").rows() == [
        (3, "created_at in the future"),
        (4, "created_at in the future"),
    ]


def without_capture(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """These settings with change capture off: the reset checks below are the ones a source without a slot gets
    (with a slot, a truncation is reported by the slot itself: tests/test_change_capture.py)."""
    monkeypatch.setenv("ADPIPE_CHANGE_CAPTURE", "off")
    return dataclasses.replace(settings, change_capture=False)


def test_reset_source_is_detected(settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = without_capture(settings, monkeypatch)
    Generator(pg, seed=5).batch(advertisers=1, campaigns=1, impressions=50, ctr=0.1)
    full(settings)
    pg.execute("TRUNCATE advertiser, campaign, impressions, clicks RESTART IDENTITY")
    Generator(pg, seed=6).batch(advertisers=1, campaigns=1, impressions=10, ctr=0.1)
    with pytest.raises(AdpipeError, match=r"source was reset \(impressions max id 10 is below the last synced id 50\)"):
        incremental(settings)
    assert ch(settings, "SELECT count() FROM impressions") == [(50,)]  # nothing half-applied
    result = sync(settings, SyncOptions(mode=Mode.INCREMENTAL, on_reset=OnReset.FULL))
    assert ch(settings, "SELECT count() FROM impressions") == [(10,)]
    assert ch(settings, "SELECT sum(impressions) FROM campaign_daily") == [(10,)]
    # The plan decided the mode before the run was named: named, recorded and staged once, as full.
    assert result.mode == "full" and result.run_id.endswith("-full")
    recorded = ch(
        settings,
        f"SELECT DISTINCT mode, status FROM sync_runs WHERE run_id = '{result.run_id}' ORDER BY status",
    )
    assert recorded == [("full", "running"), ("full", "success")]
    assert list_runs(settings.staging_dir)[-1].manifest["mode"] == "full"


def test_reset_source_with_more_rows_than_before_is_detected_by_the_row_at_the_last_synced_id(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source reset and refilled past the old high-water mark: the max id alone cannot tell, the created_at of
    the row at the last synced id (4) does. The sync refuses, on one line; `--on-reset full` leaves exactly the
    new source in the warehouse."""
    settings = without_capture(settings, monkeypatch)
    seed_hand_built(pg)
    full(settings)
    pg.execute("TRUNCATE advertiser, campaign, impressions, clicks RESTART IDENTITY")
    pg.execute("INSERT INTO advertiser (name, updated_at) VALUES ('Initech', now())")
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id) VALUES "
        "('Winter', 1.00, 80.00, '2026-10-05', '2026-10-31', 1), ('Spring', 3.00, 90.00, '2026-10-05', '2026-10-31', 1)"
    )
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at) VALUES "  # ids 1-6: more than the 4 synced before
        "(1, '2026-10-05 09:00:00'), (1, '2026-10-05 09:10:00'), (2, '2026-10-05 09:20:00'), "
        "(2, '2026-10-06 10:00:00'), (2, '2026-10-06 11:00:00'), (2, '2026-10-06 12:00:00')"
    )
    pg.execute(
        "INSERT INTO clicks (campaign_id, created_at) VALUES "  # ids 1-3: more than the 2 synced before
        "(1, '2026-10-05 09:00:05'), (2, '2026-10-06 10:00:05'), (2, '2026-10-06 12:00:05')"
    )
    refused = "the source was reset (impressions row 4 is not the row synced last time)"
    with pytest.raises(SyncRefusedError, match=re.escape(refused)):
        incremental(settings)
    cli = run_cli("sync")
    assert cli.exit_code == 1
    assert cli.stderr.count("\n") == 1, cli.stderr
    assert cli.stderr.startswith(f"error: {refused}; run `adpipe sync --mode full`")
    # Nothing of the new source was applied: the warehouse still holds what was synced before the reset.
    assert ch(settings, "SELECT id, campaign_id, toString(created_at) FROM impressions ORDER BY id") == [
        (1, 1, "2026-11-20 10:00:00.000000"),
        (2, 1, "2026-11-20 23:59:59.999999"),
        (3, 1, "2026-11-21 00:00:00.000000"),
        (4, 2, "2026-11-21 08:30:00.000000"),
    ]

    result = sync(settings, SyncOptions(mode=Mode.INCREMENTAL, on_reset=OnReset.FULL))
    assert result.mode == "full"
    assert ch(settings, "SELECT id, campaign_id, toString(created_at) FROM impressions ORDER BY id") == [
        (1, 1, "2026-10-05 09:00:00.000000"),
        (2, 1, "2026-10-05 09:10:00.000000"),
        (3, 2, "2026-10-05 09:20:00.000000"),
        (4, 2, "2026-10-06 10:00:00.000000"),
        (5, 2, "2026-10-06 11:00:00.000000"),
        (6, 2, "2026-10-06 12:00:00.000000"),
    ]
    assert ch(settings, "SELECT id, campaign_id FROM clicks ORDER BY id") == [(1, 1), (2, 2), (3, 2)]
    assert ch(settings, "SELECT id, name FROM campaign FINAL WHERE is_deleted = 0 ORDER BY id") == [
        (1, "Winter"),
        (2, "Spring"),
    ]
    assert ch(settings, "SELECT id, name FROM advertiser FINAL WHERE is_deleted = 0 ORDER BY id") == [(1, "Initech")]
    assert sorted(
        ch(settings, "SELECT campaign_id, day, sum(impressions), sum(clicks) FROM campaign_daily GROUP BY ALL")
    ) == [(1, date(2026, 10, 5), 2, 1), (2, date(2026, 10, 5), 1, 0), (2, date(2026, 10, 6), 3, 2)]
    # The anchor is now the new row 6: the next incremental run goes ahead and finds nothing new.
    incremental(settings)
    assert ch(settings, "SELECT count() FROM impressions") == [(6,)]


def test_second_concurrent_sync_is_refused(settings: Settings, pg: psycopg.Connection) -> None:
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        with exclusive_lock(settings.home / "sync.lock", "sync"):
            started.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    started.wait(10)
    try:
        result = run_cli("sync")
    finally:
        release.set()
        holder.join()
    assert result.exit_code == 1
    assert "sync is busy: another adpipe process" in result.stderr


def test_two_full_runs_of_unchanged_data_stage_identical_files(settings: Settings, pg: psycopg.Connection) -> None:
    seed_hand_built(pg)
    Generator(pg, seed=9).batch(advertisers=1, campaigns=2, impressions=100, ctr=0.1)
    full(settings)
    full(settings)
    first, second = list_runs(settings.staging_dir)

    def checksums(run: object) -> dict[str, str]:
        return {p["path"]: p["sha256"] for t in run.manifest["tables"].values() for p in t["parts"]}

    assert checksums(first) == checksums(second)
    assert len(checksums(first)) == 4  # one part per table; no quarantine part, as no row is bad


def test_replay_rebuilds_the_same_warehouse_without_postgres(settings: Settings, pg: psycopg.Connection) -> None:
    generator = Generator(pg, seed=11)
    generator.batch(advertisers=2, campaigns=2, impressions=100, ctr=0.1)
    full(settings)
    generator.batch(advertisers=1, campaigns=1, impressions=100, ctr=0.1)
    pg.execute("UPDATE campaign SET name = 'Renamed' WHERE id = 1")
    incremental(settings)
    before = per_campaign_ch(settings, "impressions"), aggregate_ch(settings, "clicks")
    client = clickhouse.connect(settings)
    client.command("TRUNCATE TABLE impressions")
    client.command("TRUNCATE TABLE campaign_daily")
    replayed = replay(settings)
    assert len(replayed) == 2
    assert (per_campaign_ch(settings, "impressions"), aggregate_ch(settings, "clicks")) == before
    assert ch(settings, "SELECT name FROM campaign FINAL WHERE id = 1") == [("Renamed",)]
    assert sum(before[0].values()) == 500


def test_snapshots_verify_detects_a_changed_file(settings: Settings, pg: psycopg.Connection) -> None:
    seed_hand_built(pg)
    full(settings)
    assert run_cli("snapshots", "verify").exit_code == 0
    part = list_runs(settings.staging_dir)[0].directory / "clicks" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:-1] + b"\x00")
    result = run_cli("snapshots", "verify")
    assert result.exit_code == 1
    assert "clicks/part-00000.parquet: sha256" in result.stderr


def test_a_staged_run_that_is_not_what_its_manifest_says_is_refused_before_anything_changes(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """Replay checks every part it will load first: one found damaged half way left the warehouse half rebuilt and
    the state back at the full run. A manifest that is not one adpipe wrote is one line for every command."""
    seed_hand_built(pg)
    full(settings)
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-22 10:00:00')")
    incremental(settings)
    before = (per_campaign_ch(settings, "impressions"), load_state(settings.home).last_run_id)
    full_run, incremental_run = list_runs(settings.staging_dir)
    part = incremental_run.directory / "impressions" / "part-00000.parquet"
    part.write_bytes(part.read_bytes() + b"garbage")
    replayed = run_cli("replay")
    assert replayed.exit_code == 1
    assert replayed.stderr.startswith(f"error: staged run {incremental_run.run_id}: impressions/part-00000.parquet:")
    assert replayed.stderr.endswith("; nothing was replayed\n")
    assert (per_campaign_ch(settings, "impressions"), load_state(settings.home).last_run_id) == before
    for damage in ("{not json", "{}", '{"mode": "full", "tables": {"clicks": 1}, "source": {}, "state_after": {}}'):
        (full_run.directory / "manifest.json").write_text(damage)
        for command in (["snapshots", "list"], ["snapshots", "verify"], ["replay"], ["reconcile"]):
            result = run_cli(*command)
            assert result.exit_code == 1, (damage, command)
            assert result.stderr.startswith(f"error: staged run {full_run.run_id}: its manifest.json is not one adpipe")
            assert result.stderr.count("\n") == 1, result.stderr
    assert run_cli("sync").exit_code == 0  # it reads only the runs after the last one it committed


def test_missing_ranges() -> None:
    import numpy as np

    assert missing_ranges(np.array([2, 3, 7]), 0, 9) == [(1, 1), (4, 6), (8, 9)]
    assert missing_ranges(np.array([], dtype=np.int64), 5, 8) == [(6, 8)]
    assert missing_ranges(np.array([6, 7, 8]), 5, 8) == []


def test_adbc_engine_stages_the_same_rows_as_connectorx(settings: Settings, pg: psycopg.Connection) -> None:
    seed_hand_built(pg)
    Generator(pg, seed=13).batch(advertisers=1, campaigns=2, impressions=300, ctr=0.1)
    full(settings, engine=Engine.CONNECTORX)
    full(settings, engine=Engine.ADBC)
    connectorx_run, adbc_run = list_runs(settings.staging_dir)
    for table in ("advertiser", "campaign", "impressions", "clicks"):
        assert [p.sha256 for p in connectorx_run.parts(table)] == [p.sha256 for p in adbc_run.parts(table)], table
    assert per_campaign_ch(settings, "impressions") == {1: 3, 2: 1, 4: 300, 5: 300}


@pytest.mark.warehouses("chdb")
@pytest.mark.parametrize("partitions", [1, 2, 3])
def test_fact_chunks_hold_rows_not_ids_whatever_the_gaps(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, partitions: int
) -> None:
    """Chunks of 3 rows over ids with a jump of 2e9: three chunks, each range covering exactly its own ids."""
    from pipeline.sync.extract import SourceReader

    ids = [1, 2, 3, 7, 8, 2_000_000_000, 2_000_000_001, 2_000_000_005]
    with pg.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO impressions (id, campaign_id, created_at) VALUES (%s, NULL, '2026-11-21 00:00:00')",
            [(i,) for i in ids],
        )
    # Parallel partitions are used only for large chunks; here for 3 rows, to run that path on a small table.
    monkeypatch.setattr(SourceReader, "_partitions_for", lambda self, rows: partitions)
    with SourceReader(settings, partitions=partitions) as reader:
        chunks = [
            (after, upto, rows.column("id").to_pylist())
            for after, upto, rows in reader.read_id_range("impressions", 0, reader.max_id("impressions"), 3)
        ]
    assert chunks == [
        (0, 3, [1, 2, 3]),
        (3, 2_000_000_000, [7, 8, 2_000_000_000]),
        (2_000_000_000, 2_000_000_005, [2_000_000_001, 2_000_000_005]),
    ]


@pytest.mark.warehouses("chdb")
def test_a_reader_connection_that_breaks_is_one_line_and_retried(settings: Settings, pg: psycopg.Connection) -> None:
    """The reader's ADBC connection dies (the server terminates it): the error is described in one line, as a broken
    psycopg connection is, and a follower retries it."""
    from pipeline.errors import describe_failure, is_transient
    from pipeline.sync.extract import SourceReader

    seed_hand_built(pg)
    with SourceReader(settings) as reader:
        reader.read_all("advertiser")  # opens the reader's ADBC connection
        (backend,) = reader._adbc[0].read_arrow("SELECT pg_backend_pid()").column(0).to_pylist()
        pg.execute("SELECT pg_terminate_backend(%s, 10000)", (backend,))
        with pytest.raises(Exception) as broken:
            reader.read_all("campaign")
    line = describe_failure(broken.value)
    assert line is not None and "\n" not in line
    assert line.startswith("Postgres connection failed: ")
    assert "terminating connection due to administrator command" in line
    assert is_transient(broken.value)


@pytest.mark.warehouses("chdb")  # the source alone: one warehouse is enough
def test_the_first_reader_connection_opens_with_the_snapshot_and_closes_with_the_reader(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """The reader opens its first ADBC connection in the background as it takes the snapshot (it is ready when a run
    has read the slot), the first read uses it, and a reader that never reads closes it all the same."""
    from pipeline.sync.extract import SourceReader

    seed_hand_built(pg)
    client_backends = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )

    def backends_become(count: int) -> None:
        wait_until(lambda: pg.execute(client_backends).fetchone()[0] == count, 10, f"{count} other backends")

    with SourceReader(settings) as reader:
        backends_become(2)  # the coordinator holding the snapshot, and the connection opened beside it
        assert reader.read_all("advertiser").num_rows == 2
        assert reader.read_all("campaign").num_rows == 3  # each on the connection already open
        backends_become(2)
        time.sleep(0.3)
        assert pg.execute(client_backends).fetchone()[0] == 2
    backends_become(0)
    with SourceReader(settings):
        backends_become(2)
    backends_become(0)  # never read: closed with the reader


def test_a_warehouse_that_cannot_open_leaves_no_source_session_behind(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source opens on a thread while the warehouse opens. When the warehouse cannot open, the run stops with
    the warehouse's error, and every connection the source opened beside it, with its snapshot, is closed."""
    seed_hand_built(pg)
    full(settings)

    def sessions() -> int:
        """Client sessions on the test's database besides `pg`, once those just closed have ended: a backend leaves
        pg_stat_activity a moment after its client hangs up, later on a loaded machine."""
        deadline = time.monotonic() + 5
        while True:
            count = pg.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchone()[0]
            if count == 0 or time.monotonic() > deadline:
                return count
            time.sleep(0.05)

    clickhouse.close_all()
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", "http://127.0.0.1:1")
    result = run_cli("sync")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach ClickHouse at http://127.0.0.1:1")
    assert result.stderr.count("\n") == 1
    assert sessions() == 0
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", settings.clickhouse_url)
    pg.execute("UPDATE impressions SET campaign_id = 2 WHERE id = 1")
    incremental(settings)  # the failed attempt consumed nothing: the next run applies the update
    assert ch(settings, "SELECT campaign_id FROM impressions WHERE id = 1") == [(2,)]


@pytest.mark.warehouses("chdb")
def test_the_fact_tables_are_read_side_by_side_from_the_moment_the_source_opens(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a run's source starts each fact table's read in a thread of its own: before the run takes a single
    chunk, both tables are being read at once, each in the run's snapshot. A mode the run ends up not running in
    (here: opened incremental, run full) has its reads replaced by the right ones."""
    from pipeline.sync.extract import SourceReader
    from pipeline.sync.run_source import SourceOptions, open_run_source, previous_fact
    from pipeline.sync.state import FactState, SyncState

    seed_hand_built(pg)
    reading: dict[str, threading.Event] = {"impressions": threading.Event(), "clicks": threading.Event()}
    both = threading.Barrier(2, timeout=10)  # passed only while both tables are being read at the same time
    real_read = SourceReader.read_id_range

    def read_id_range(self: SourceReader, table: str, *args: object) -> object:
        reading[table].set()
        both.wait()
        return real_read(self, table, *args)

    monkeypatch.setattr(SourceReader, "read_id_range", read_id_range)
    # A state as if ids 1–2 of each fact were synced: the reads opened for an incremental run start above them.
    state = SyncState("earlier", 1, {table: FactState(high_water=2) for table in ("impressions", "clicks")})
    source = open_run_source(settings, SourceOptions(Engine.ADBC, 1, 2), state, Mode.INCREMENTAL)
    with source.closing:
        assert all(started.wait(10) for started in reading.values()), "a fact table's read did not start on opening"
        opened = source.fact_read("impressions", previous_fact(state, "impressions", Mode.INCREMENTAL), 2)
        assert [chunk.rows.column("id").to_pylist() for chunk in opened.chunks] == [[3, 4]]
        # Planned as a full run after all: the reads from the earlier state are no use, and are read again.
        both.reset()
        monkeypatch.setattr(SourceReader, "read_id_range", real_read)
        clicks = source.fact_read("clicks", previous_fact(state, "clicks", Mode.FULL), 2)
        assert [chunk.rows.column("id").to_pylist() for chunk in clicks.chunks] == [[1, 2]]
        assert clicks.high_water == 2


def test_a_warehouse_object_dropped_by_hand_is_created_again_by_the_next_sync(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """The schema is applied on every sync, sending only the CREATEs whose object is missing: a view dropped by hand
    comes back, and the aggregates it feeds count the next rows."""
    seed_hand_built(pg)
    full(settings)
    clickhouse.connect(settings).command("DROP VIEW clicks_daily_mv")
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")
    incremental(settings)
    assert ch(
        settings, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'clicks_daily_mv'"
    ) == [(1,)]
    assert aggregate_ch(settings, "clicks") == {1: 2, 2: 1}


def test_a_full_run_loads_two_parts_side_by_side_on_a_client_it_closes(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full run loads its parts into the shadow database two at a time, on the run's client and a second one,
    which is closed when the loads are done. The warehouse then holds exactly the source's rows."""
    from pipeline.sync import execute

    seed_hand_built(pg)
    both = threading.Barrier(2, timeout=10)  # passed only while two parts are being loaded at the same time
    loaded_by: set[int] = set()
    real_load, real_another = execute.load_part, clickhouse.connect_another
    opened: list = []
    closed: list = []

    def load_part(client: object, *args: object, **kwargs: object) -> None:
        if not loaded_by:
            both.wait()
        loaded_by.add(id(client))
        real_load(client, *args, **kwargs)

    def connect_another(settings: Settings) -> object:
        client = real_another(settings)
        real_close = client.close
        client.close = lambda: (closed.append(client), real_close())[1]
        opened.append(client)
        return client

    monkeypatch.setattr(execute, "load_part", load_part)
    monkeypatch.setattr(clickhouse, "connect_another", connect_another)
    full(settings, chunk_rows=2)
    assert len(opened) == 1 and len(loaded_by) == 2
    assert closed == opened
    assert per_campaign_ch(settings, "impressions") == {1: 3, 2: 1}
    assert per_campaign_ch(settings, "clicks") == {1: 2}
    assert aggregate_ch(settings, "impressions") == {1: 3, 2: 1}


def test_a_staging_directory_serves_one_home_and_another_home_is_refused_it(
    settings: Settings, pg: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs staged by one ADPIPE_HOME are never loaded, replayed or pruned by another home pointed at the same
    staging directory: its sync, replay and prune stop in one line, before anything is read or written. The home's
    id goes with it when it moves, and a home deleted and made again at the same path takes its runs back."""
    seed_hand_built(pg)
    full(settings)
    staged = [run.run_id for run in list_runs(settings.staging_dir)]
    other = tmp_path / "another-home"
    monkeypatch.setenv("ADPIPE_HOME", str(other))
    for command in (["sync"], ["replay"], ["snapshots", "prune", "--keep", "1"]):
        result = run_cli(*command)
        assert result.exit_code == 1, command
        assert result.stderr == (
            f"error: ADPIPE_STAGING_DIR {settings.staging_dir} holds the staged runs of another ADPIPE_HOME"
            f" ({settings.home}): give each home a staging directory of its own; if that home is this one, moved"
            f" without its home_id.json, delete {settings.staging_dir / 'adpipe-home.json'} to take its runs over\n"
        ), command
    assert [run.run_id for run in list_runs(settings.staging_dir)] == staged
    assert not (other / STATE_FILE).exists()
    # The first home, moved: it is still the one whose runs these are.
    moved = tmp_path / "moved-home"
    settings.home.rename(moved)
    monkeypatch.setenv("ADPIPE_HOME", str(moved))
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")
    result = run_cli("sync")
    assert result.exit_code == 0, result.stderr
    assert per_campaign_ch(settings, "clicks") == {1: 2, 2: 1}
    # The home deleted and made again where it was (its warehouse lost with it, say): it takes its runs back.
    shutil.rmtree(moved)
    replayed = run_cli("replay")
    assert replayed.exit_code == 0, replayed.stderr
    assert per_campaign_ch(settings, "clicks") == {1: 2, 2: 1}
    # A marker that is not what adpipe wrote is one line too, not a traceback.
    marker = settings.staging_dir / "adpipe-home.json"
    marker.write_text("{not json")
    result = run_cli("sync")
    assert (result.exit_code, result.stderr) == (
        1,
        f"error: {marker} is not a file adpipe wrote: delete it, and sync again\n",
    )


def test_a_warehouse_an_earlier_adpipe_made_is_brought_up_to_date_by_the_next_sync(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """Tables an earlier adpipe created are altered in place by the next sync, their rows kept: an unsigned aggregate
    count becomes signed (retractions subtract), a fact table gets the block columns patch-part deletes need, and a
    table that kept merged-away parts on disk for 30 s deletes them within a second or two."""
    seed_hand_built(pg)
    full(settings)
    client = clickhouse.connect(settings)
    client.command(
        "ALTER TABLE sync_runs RESET SETTING cleanup_delay_period, max_cleanup_delay_period,"
        " cleanup_delay_period_random_add, merge_tree_clear_old_parts_interval_seconds"
    )
    client.command("ALTER TABLE campaign_daily MODIFY COLUMN clicks UInt64")
    client.command("ALTER TABLE clicks RESET SETTING enable_block_number_column, enable_block_offset_column")
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")
    incremental(settings)
    assert (
        ch(
            settings,
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'"
            " AND (create_table_query NOT LIKE '%cleanup_delay_period = 1, max_cleanup_delay_period = 1%'"
            " OR create_table_query NOT LIKE '%random_add = 0, merge_tree_clear_old_parts_interval_seconds = 0%')",
        )
        == []
    )
    assert ch(
        settings,
        "SELECT type FROM system.columns WHERE database = currentDatabase() AND table = 'campaign_daily'"
        " AND name = 'clicks'",
    ) == [("Int64",)]
    assert sorted(
        ch(
            settings,
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND name IN ('impressions', 'clicks')"
            " AND create_table_query LIKE '%enable_block_number_column = 1, enable_block_offset_column = 1%'",
        )
    ) == [("clicks",), ("impressions",)]
    assert aggregate_ch(settings, "clicks") == {1: 2, 2: 1}
    assert len(ch(settings, "SELECT DISTINCT run_id FROM sync_runs")) == 2
    # The facts take a patch-part delete again: a click deleted in the source leaves them.
    pg.execute("DELETE FROM clicks WHERE id = 1")
    incremental(settings)
    assert per_campaign_ch(settings, "clicks") == {1: 1, 2: 1}
