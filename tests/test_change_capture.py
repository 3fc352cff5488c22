"""Fact updates, deletes and truncations reach the warehouse (change capture), or the sync says it cannot.

Against the real embedded Postgres (wal_level=logical) and the real ClickHouse engine. Every expectation is either
a literal for the hand-built rows below or counted in Postgres with plain SQL that shares no code with the sync.
After each change the warehouse must equal the source: its facts row for row, the aggregates per campaign and
day and per campaign and hour, and `reconcile` (the KPIs recomputed by DuckDB from the staged snapshot).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, date, datetime
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from clickhouse_connect.driver.client import Client

from pipeline.analytics.kpi import Filters, get_kpi, run_clickhouse
from pipeline.analytics.reconcile import reconcile
from pipeline.config import Settings, load_settings
from pipeline.errors import SyncRefusedError
from pipeline.locks import exclusive_lock
from pipeline.options import Mode, OnReset
from pipeline.source.capture import format_lsn, lsn_value, slot_info
from pipeline.source.generate import Generator
from pipeline.source.pgoutput import DecodedTransaction
from pipeline.source.postgres import connect
from pipeline.storage import Store
from pipeline.sync.capture import Changes, RunCapture, collect, run_capture, visible
from pipeline.sync.extract import Snapshot
from pipeline.sync.run import SyncOptions, replay, sync
from pipeline.sync.runlog import SyncResult
from pipeline.sync.stage import list_runs
from pipeline.sync.state import load_state, save_state
from pipeline.warehouse import client as clickhouse
from tests.conftest import run_cli
from tests.harness import adpipe, capture_slot, wait_until
from tests.test_sync import seed_hand_built

pytestmark = pytest.mark.warehouses


def full(settings: Settings) -> None:
    sync(settings, SyncOptions(mode=Mode.FULL))


def incremental(settings: Settings, **kw: object) -> SyncResult:
    return sync(settings, SyncOptions(mode=Mode.INCREMENTAL, **kw))


def ch(settings: Settings, sql: str) -> list[tuple]:
    return clickhouse.connect(settings).query(sql).result_rows


def seed(pg: psycopg.Connection) -> None:
    """`seed_hand_built`, and one more impression and click. Advertisers 1, 2; campaigns 1, 2 (advertiser 1) and 3
    (advertiser 2).
    Impressions 1-4 (campaign 1: 1, 2, 3; campaign 2: 4) and 5 (campaign 3); clicks 1, 2 (campaign 1), 3 (campaign 2).
    """
    seed_hand_built(pg)
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (3, '2026-11-22 12:00:00')")
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-21 08:31:00')")


def facts_pg(pg: psycopg.Connection, table: str) -> list[tuple]:
    rows = pg.execute(f"SELECT id, campaign_id, created_at FROM {table} WHERE campaign_id IS NOT NULL ORDER BY id")
    return rows.fetchall()


def facts_ch(settings: Settings, table: str) -> list[tuple]:
    rows = ch(settings, f"SELECT id, campaign_id, created_at FROM {table} ORDER BY id")
    return [(i, c, t.replace(tzinfo=None)) for i, c, t in rows]


def daily_pg(pg: psycopg.Connection, table: str, unit: str) -> dict[tuple, int]:
    rows = pg.execute(
        f"SELECT campaign_id, date_trunc('{unit}', created_at), count(*) FROM {table}"
        " WHERE campaign_id IS NOT NULL GROUP BY 1, 2"
    )
    return {(c, t.date() if unit == "day" else t): n for c, t, n in rows.fetchall()}


def daily_ch(settings: Settings, table: str, aggregate: str, key: str) -> dict[tuple, int]:
    """The aggregate as KPI queries read it (sum per key); keys whose sum is 0 are what a retraction leaves."""
    rows = ch(
        settings,
        f"SELECT campaign_id, {key}, sum({table}) AS n FROM {aggregate} GROUP BY campaign_id, {key} HAVING n != 0",
    )
    return {(c, k if key == "day" else k.replace(tzinfo=None)): n for c, k, n in rows}


def assert_equals_source(settings: Settings, pg: psycopg.Connection) -> None:
    for table in ("impressions", "clicks"):
        assert facts_ch(settings, table) == facts_pg(pg, table)
        assert daily_ch(settings, table, "campaign_daily", "day") == daily_pg(pg, table, "day")
        assert daily_ch(settings, table, "campaign_hourly", "hour") == daily_pg(pg, table, "hour")
    report = reconcile(settings)
    assert report.ok, [check for check in report.checks if not check.ok]


def test_a_click_reattributed_to_another_campaign_moves_with_it(settings: Settings, pg: psycopg.Connection) -> None:
    seed(pg)
    full(settings)
    pg.execute("UPDATE clicks SET campaign_id = 2 WHERE id = 1")
    result = incremental(settings)
    assert result.tables["clicks"].retracted == 1
    totals = ch(settings, "SELECT campaign_id, sum(clicks) AS n FROM campaign_daily GROUP BY 1 HAVING n != 0")
    assert dict(totals) == {1: 1, 2: 2}
    ctr = run_clickhouse(clickhouse.connect(settings), get_kpi("campaign_ctr"), Filters())
    assert dict(zip(ctr["campaign_id"], ctr["clicks"], strict=True)) == {1: 1, 2: 2, 3: 0}
    assert_equals_source(settings, pg)


def test_a_change_reverted_loads_the_first_version_again(settings: Settings, pg: psycopg.Connection) -> None:
    """The run that reverts a change stages the same bytes as the run that loaded the first version: the warehouse
    once dropped that part as a repeat of the earlier insert, and the click vanished while the sync said loaded."""
    seed(pg)
    full(settings)
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-22 10:00:00')")  # id 4, alone
    incremental(settings)
    for campaign in (3, 2, 3, 2):
        pg.execute("UPDATE clicks SET campaign_id = %s WHERE id = 4", (campaign,))
        result = incremental(settings)
        assert (result.tables["clicks"].retracted, result.tables["clicks"].loaded) == (1, 1)
        assert ch(settings, "SELECT campaign_id FROM clicks WHERE id = 4") == [(campaign,)]
        assert_equals_source(settings, pg)


def test_a_run_an_earlier_adpipe_staged_and_loaded_before_it_died_is_recovered_without_doubles(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Manifest format 1: its parts went under tokens without the run id. The sync after an upgrade loads them again
    under those, so the warehouse drops them as the repeats they are."""
    from pipeline.sync import execute, stage

    seed(pg)
    full(settings)
    pg.execute("UPDATE clicks SET campaign_id = 3 WHERE id = 1")
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-22 10:00:00')")

    def died(name: str) -> None:
        if name == "loaded":
            raise KeyboardInterrupt  # loaded, not committed: what a process killed there leaves

    def load_part_as_before(
        client: Client, table: str, store: Store, path: PurePath, sha256: str, *_: Any, **__: Any
    ) -> None:
        client.raw_insert(
            table,
            insert_block=store.read_bytes(path),
            fmt="Parquet",
            settings={
                "deduplicate_blocks_in_dependent_materialized_views": 1,
                "insert_deduplication_token": f"{table}:{sha256}",  # what adpipe sent before manifest format 2
            },
        )

    real = (stage.MANIFEST_FORMAT, execute.kill_point, execute.load_part)
    monkeypatch.setattr(stage, "MANIFEST_FORMAT", 1)
    monkeypatch.setattr(execute, "kill_point", died)
    monkeypatch.setattr(execute, "load_part", load_part_as_before)
    with pytest.raises(KeyboardInterrupt):
        incremental(settings)
    stage.MANIFEST_FORMAT, execute.kill_point, execute.load_part = real  # the upgraded adpipe (not undo(): the env)
    assert load_state(settings.home).last_run_id != list_runs(settings.staging_dir)[-1].run_id  # pending
    incremental(settings)
    assert_equals_source(settings, pg)


def test_every_fact_deleted_and_the_ids_restarted_the_new_rows_are_all_read(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """A reset by DELETE that also restarts the sequences: the ids come again below the last synced one. Those that
    follow the sync that applied the deletes were never read (no insert is in the slot, and the id scan started
    above the old mark): the warehouse stayed short, and every command exited 0."""
    seed(pg)
    full(settings)
    for table in ("clicks", "impressions"):
        pg.execute(f"DELETE FROM {table}")
        pg.execute(f"ALTER SEQUENCE {table}_id_seq RESTART")
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (1, '2026-11-23 10:00:00')")  # id 1
    incremental(settings)  # read again, as the id of a deleted row
    assert_equals_source(settings, pg)
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-23 11:00:00')")  # id 2
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-23 11:00:30')")  # id 1
    incremental(settings)  # above the mark, which came down to the max id
    assert [row[0] for row in facts_ch(settings, "impressions")] == [1, 2]
    assert [row[0] for row in facts_ch(settings, "clicks")] == [1]
    assert_equals_source(settings, pg)


def test_ids_drawn_again_below_the_warehouses_rows_are_read_even_those_an_earlier_run_deleted(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """A reset by DELETE (the ids go on), synced; then another with the sequences restarted. The new rows take ids
    of rows an earlier run deleted, which no change of this run names: they were never read, and `reconcile`
    passed (it counts Postgres up to the warehouse's largest id)."""
    seed(pg)
    full(settings)  # impressions 1-5, clicks 1-3
    for table in ("clicks", "impressions"):
        pg.execute(f"DELETE FROM {table}")
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at)"
        " SELECT 1, timestamp '2026-11-23 10:00' + n * interval '1 minute' FROM generate_series(1, 6) AS n"
    )  # ids 6-11
    incremental(settings)
    assert_equals_source(settings, pg)
    for table in ("clicks", "impressions"):
        pg.execute(f"DELETE FROM {table}")
        pg.execute(f"ALTER SEQUENCE {table}_id_seq RESTART")
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at)"
        " SELECT 2, timestamp '2026-11-24 10:00' + n * interval '1 minute' FROM generate_series(1, 3) AS n"
    )  # ids 1-3, deleted by the first reset's run
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-24 10:05:00')")  # id 1
    incremental(settings)
    assert [row[0] for row in facts_ch(settings, "impressions")] == [1, 2, 3]
    assert [row[0] for row in facts_ch(settings, "clicks")] == [1]
    assert_equals_source(settings, pg)


def test_deleted_impressions_leave_the_facts_and_the_aggregates(settings: Settings, pg: psycopg.Connection) -> None:
    seed(pg)
    full(settings)
    pg.execute("DELETE FROM impressions WHERE id IN (1, 2)")
    result = incremental(settings)
    assert (result.tables["impressions"].retracted, result.tables["impressions"].loaded) == (2, 0)
    assert [row[0] for row in facts_ch(settings, "impressions")] == [3, 4, 5]
    assert_equals_source(settings, pg)
    incremental(settings)  # nothing new: the same changes are not applied twice
    assert [row[0] for row in facts_ch(settings, "impressions")] == [3, 4, 5]
    assert_equals_source(settings, pg)


@pytest.mark.warehouses("chdb")
def test_the_embedded_engine_holds_no_pending_delete_after_a_run(settings: Settings, pg: psycopg.Connection) -> None:
    """A run folds its deletes into the fact table's parts before it ends: read without applying patch parts, the
    table holds the source's rows alone. Left pending, every later read of the table applies them to every row."""
    seed(pg)
    full(settings)
    pg.execute("DELETE FROM impressions WHERE id IN (1, 2)")
    pg.execute("UPDATE impressions SET campaign_id = 2 WHERE id = 3")
    incremental(settings)
    unpatched = "SELECT id, campaign_id FROM impressions ORDER BY id, campaign_id SETTINGS apply_patch_parts = 0"
    assert ch(settings, unpatched) == [(3, 2), (4, 2), (5, 3)]
    assert_equals_source(settings, pg)


@pytest.mark.warehouses("chdb")
def test_deletes_the_engine_cannot_fold_yet_leave_the_rows_right_and_a_warning(
    settings: Settings, pg: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Folding a run's deletes in is a mutation, queued behind any other: one that fails (here a person's delete that
    throws) holds it. The delete itself is committed and every read applies it, so the run completes
    and says so, instead of failing every sync until someone kills that mutation."""
    seed(pg)
    full(settings)
    ch(settings, "ALTER TABLE impressions DELETE WHERE throwIf(id > 0, 'held') SETTINGS mutations_sync = 0")
    pg.execute("DELETE FROM impressions WHERE id = 1")
    pg.execute("UPDATE impressions SET campaign_id = 2 WHERE id = 3")
    with caplog.at_level(logging.WARNING, logger="pipeline.sync.load"):
        result = incremental(settings)
    assert result.tables["impressions"].retracted == 2
    assert "the deleted rows of `impressions` are not folded into its parts yet" in caplog.text
    assert_equals_source(settings, pg)
    ch(settings, "KILL MUTATION WHERE table = 'impressions' AND command LIKE '%throwIf%' SYNC")
    pg.execute("DELETE FROM impressions WHERE id = 2")
    incremental(settings)
    unpatched = "SELECT id FROM impressions ORDER BY id SETTINGS apply_patch_parts = 0"
    assert ch(settings, unpatched) == [(3,), (4,), (5,)]  # the way clear, every delete is folded in
    assert_equals_source(settings, pg)


_PATCHES_LEFT_AFTER_OPENING = """
import time
from pipeline.config import load_settings
from pipeline.warehouse import client
engine = client.connect(load_settings())
opened = time.monotonic()
query = ("SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'impressions' AND active"
         " AND startsWith(name, 'patch-')")
while engine.command(query) and time.monotonic() - opened < 0.9:
    time.sleep(0.05)
print(engine.command(query))
"""


@pytest.mark.warehouses("chdb")
def test_the_patch_parts_runs_applied_are_gone_as_the_engine_opens(pg: psycopg.Connection, tmp_path: Path) -> None:
    """The engine deletes an applied patch part in a cleanup pass. With the tables' earlier settings that pass did
    nothing as a table started and came back 1 s later plus up to 10 s at random: after most adpipe processes had
    ended. Each left its patch parts to the next, which loaded them all as it opened. The pass now runs as the tables
    start (`schemas/clickhouse/005_sync_runs.sql`)."""
    engine = tmp_path / "engine"
    env = {**os.environ, "ADPIPE_CLICKHOUSE_URL": f"chdb://{engine}"}  # processes of their own, on an engine of its own
    seed(pg)
    assert adpipe(env, "sync", "--mode", "full").returncode == 0
    for moved in ("2026-10-01 00:00:00", "2026-09-01 00:00:00"):  # each run leaves a patch part in a month
        pg.execute("UPDATE impressions SET created_at = %s WHERE id IN (1, 4)", (moved,))
        assert adpipe(env, "sync").returncode == 0
    assert [part for part in engine.glob("store/*/*/patch-*") if (part / "count.txt").exists()]
    check = [sys.executable, "-c", _PATCHES_LEFT_AFTER_OPENING]
    opened = subprocess.run(check, env=env, capture_output=True, text=True)
    assert (opened.returncode, opened.stdout) == (0, "0\n"), opened.stderr
    assert adpipe(env, "reconcile").returncode == 0


def test_a_timestamp_moved_across_a_day_and_a_month_leaves_nothing_at_the_old_place(
    settings: Settings, pg: psycopg.Connection
) -> None:
    seed(pg)
    full(settings)
    pg.execute("UPDATE impressions SET created_at = '2026-11-24 07:00:00' WHERE id = 1")  # another day
    pg.execute("UPDATE impressions SET created_at = '2026-10-31 23:30:00' WHERE id = 2")  # another month
    incremental(settings)
    daily = daily_ch(settings, "impressions", "campaign_daily", "day")
    assert {day.isoformat() for (campaign, day) in daily if campaign == 1} == {"2026-10-31", "2026-11-21", "2026-11-24"}
    november = ch(settings, "SELECT count() FROM impressions WHERE toYYYYMM(created_at) = 202611 AND campaign_id = 1")
    assert november == [(2,)]
    assert_equals_source(settings, pg)


def test_a_campaign_moved_to_another_advertiser_moves_its_totals(settings: Settings, pg: psycopg.Connection) -> None:
    seed(pg)
    full(settings)
    pg.execute("UPDATE campaign SET advertiser_id = 2 WHERE id = 2")
    incremental(settings)
    kpi = run_clickhouse(clickhouse.connect(settings), get_kpi("advertiser_ctr"), Filters())
    by_advertiser = dict(zip(kpi["advertiser_id"], zip(kpi["impressions"], kpi["clicks"], strict=True), strict=True))
    assert by_advertiser == {1: (3, 2), 2: (2, 1)}
    assert_equals_source(settings, pg)


def test_a_row_deleted_then_inserted_again(settings: Settings, pg: psycopg.Connection) -> None:
    seed(pg)
    full(settings)
    # Within one interval: gone and back with other values, under the same id.
    pg.execute("DELETE FROM impressions WHERE id = 3")
    pg.execute("INSERT INTO impressions (id, campaign_id, created_at) VALUES (3, 2, '2026-11-23 09:00:00')")
    # Across syncs: deleted now, its event written again (a new id from the sequence) after the sync.
    pg.execute("DELETE FROM clicks WHERE id = 2")
    incremental(settings)
    assert_equals_source(settings, pg)
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (1, '2026-11-21 00:01:00')")
    incremental(settings)
    assert [row[0] for row in facts_ch(settings, "clicks")] == [1, 3, 4]
    assert_equals_source(settings, pg)


def test_a_fact_whose_id_changes_leaves_its_old_id_for_the_new_one(settings: Settings, pg: psycopg.Connection) -> None:
    """A primary key updated past every synced id, and one updated into an id freed below them: the decoded update
    names both keys, and the old one must not stay behind."""
    seed(pg)
    full(settings)
    pg.execute("UPDATE impressions SET id = 100 WHERE id = 2")
    pg.execute("DELETE FROM clicks WHERE id = 2")
    pg.execute("UPDATE clicks SET id = 2 WHERE id = 3")
    incremental(settings)
    assert [row[0] for row in facts_ch(settings, "impressions")] == [1, 3, 4, 5, 100]
    assert facts_ch(settings, "clicks") == [
        (1, 1, datetime(2026, 11, 20, 10, 0, 30)),
        (2, 2, datetime(2026, 11, 21, 8, 31)),
    ]
    assert_equals_source(settings, pg)


def test_several_changes_to_one_row_between_syncs_leave_its_last_version(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """Only the version each row had when the sync read it counts: an intermediate version never reached the
    warehouse and is retracted from nothing, and a row inserted and changed since the last sync is simply new."""
    seed(pg)
    full(settings)
    pg.execute("UPDATE impressions SET campaign_id = 2 WHERE id = 1")
    pg.execute("UPDATE impressions SET campaign_id = 3 WHERE id = 1")
    pg.execute("UPDATE impressions SET created_at = created_at - interval '40 days' WHERE id = 4")
    pg.execute("DELETE FROM impressions WHERE id = 4")
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-25 10:00:00')")
    pg.execute("UPDATE impressions SET campaign_id = 1 WHERE id = 6")
    result = incremental(settings)
    assert result.tables["impressions"].retracted == 2  # impression 1's first version, and impression 4
    assert [(row[0], row[1]) for row in facts_ch(settings, "impressions")] == [(1, 3), (2, 1), (3, 1), (5, 3), (6, 1)]
    assert daily_ch(settings, "impressions", "campaign_daily", "day") == {
        (1, date(2026, 11, 20)): 1,
        (1, date(2026, 11, 21)): 1,
        (1, date(2026, 11, 25)): 1,
        (3, date(2026, 11, 20)): 1,
        (3, date(2026, 11, 22)): 1,
    }
    assert_equals_source(settings, pg)


def test_a_fact_turned_invalid_goes_to_quarantine_and_back_when_fixed(
    settings: Settings, pg: psycopg.Connection
) -> None:
    seed(pg)
    full(settings)
    pg.execute("ALTER TABLE impressions ALTER COLUMN campaign_id DROP NOT NULL")
    pg.execute("UPDATE impressions SET campaign_id = NULL WHERE id = 4")
    incremental(settings)
    quarantined = ch(settings, "SELECT table_name, source_id, reason FROM quarantine FINAL")
    assert quarantined == [("impressions", 4, "campaign_id is NULL")]
    assert [row[0] for row in facts_ch(settings, "impressions")] == [1, 2, 3, 5]
    assert_equals_source(settings, pg)
    pg.execute("UPDATE impressions SET campaign_id = 2 WHERE id = 4")
    incremental(settings)
    assert ch(settings, "SELECT count() FROM quarantine FINAL") == [(0,)]
    assert [row[0] for row in facts_ch(settings, "impressions")] == [1, 2, 3, 4, 5]
    assert_equals_source(settings, pg)


def test_a_truncated_fact_table_stops_the_sync_or_reloads_it(settings: Settings, pg: psycopg.Connection) -> None:
    seed(pg)
    full(settings)
    pg.execute("TRUNCATE clicks")
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (3, '2026-11-22 12:00:05')")  # id 4
    with pytest.raises(SyncRefusedError, match=r"clicks truncated.*adpipe sync --mode full"):
        incremental(settings)
    assert [row[0] for row in facts_ch(settings, "clicks")] == [1, 2, 3]  # untouched
    incremental(settings, on_reset=OnReset.FULL)
    assert [row[0] for row in facts_ch(settings, "clicks")] == [4]
    assert_equals_source(settings, pg)
    incremental(settings)  # the slot moved past the truncation: no second reload
    assert load_state(settings.home).last_run_id.endswith("incremental")


def test_a_truncate_that_waits_for_a_running_sync_fails_the_run_instead_of_both_waiting_for_good(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's snapshot transaction holds `clicks` once it has read its max id; a TRUNCATE then waits for it, and
    the run's next read of `clicks`, on another connection, queued behind the TRUNCATE: the sync and the TRUNCATE
    waited for each other for good. The read now gives up (lock_timeout), and the next sync sees the truncation."""
    from pipeline.sync import extract

    seed(pg)
    full(settings)
    monkeypatch.setattr(extract, "_LOCK_TIMEOUT", "SET LOCAL lock_timeout = '300ms'")
    truncating: list[threading.Thread] = []
    real_max_id = extract.SourceReader.max_id

    def max_id_then_truncate(reader: extract.SourceReader, table: str) -> int:
        high = real_max_id(reader, table)
        if table == "clicks" and not truncating:
            other = psycopg.connect(settings.postgres_url, autocommit=True)
            truncating.append(threading.Thread(target=lambda: (other.execute("TRUNCATE clicks"), other.close())))
            truncating[0].start()
            wait_until(lambda: pg.execute(WAITING_TRUNCATE).fetchone()[0], 10, "the TRUNCATE to wait")
        return high

    monkeypatch.setattr(extract.SourceReader, "max_id", max_id_then_truncate)
    result = run_cli("sync")
    truncating[0].join(timeout=30)
    assert not truncating[0].is_alive()
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Postgres: another session holds a table the sync reads (a TRUNCATE")
    assert result.stderr.count("\n") == 1
    monkeypatch.setattr(extract.SourceReader, "max_id", real_max_id)
    again = run_cli("sync")
    assert pg.execute("SELECT count(*) FROM clicks").fetchone()[0] == 0
    assert (again.exit_code, "the source was reset (clicks truncated)" in again.stderr) == (1, True), again


WAITING_TRUNCATE = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    " AND query = 'TRUNCATE clicks'"
)


def test_the_seed_generators_delete_reset_then_batch_converges(settings: Settings, pg: psycopg.Connection) -> None:
    generator = Generator(pg, seed=3)
    generator.batch(advertisers=2, campaigns=2, impressions=200, ctr=0.1)
    full(settings)
    for table in ("clicks", "impressions", "campaign", "advertiser"):  # the seed challenge's `reset`
        pg.execute(f"DELETE FROM {table}")
    generator.batch(advertisers=1, campaigns=2, impressions=70, ctr=0.2)
    incremental(settings)
    assert ch(settings, "SELECT count() FROM impressions") == [(140,)]
    assert_equals_source(settings, pg)


def test_a_delete_committed_after_a_sync_is_applied_by_the_next(settings: Settings, pg: psycopg.Connection) -> None:
    seed(pg)
    full(settings)
    late = psycopg.connect(pg.info.dsn)
    late.execute("DELETE FROM impressions WHERE id = 5")
    pg.execute("UPDATE impressions SET campaign_id = 2 WHERE id = 1")  # committed before the sync
    incremental(settings)
    assert [row[:2] for row in facts_ch(settings, "impressions")] == [(1, 2), (2, 1), (3, 1), (4, 2), (5, 3)]
    late.commit()
    late.close()
    incremental(settings)
    assert [row[:2] for row in facts_ch(settings, "impressions")] == [(1, 2), (2, 1), (3, 1), (4, 2)]
    assert_equals_source(settings, pg)


def test_replay_rebuilds_the_changes_from_the_staged_runs(settings: Settings, pg: psycopg.Connection) -> None:
    seed(pg)
    full(settings)
    pg.execute("UPDATE clicks SET campaign_id = 3 WHERE id = 3")
    pg.execute("DELETE FROM impressions WHERE id = 2")
    incremental(settings)
    pg.execute("UPDATE clicks SET campaign_id = 2 WHERE id = 3")  # and back
    incremental(settings)
    expected = facts_ch(settings, "clicks"), facts_ch(settings, "impressions")
    clickhouse.connect(settings).command("TRUNCATE TABLE clicks")
    replay(settings)
    assert (facts_ch(settings, "clicks"), facts_ch(settings, "impressions")) == expected
    assert_equals_source(settings, pg)


def test_the_slot_advances_only_past_what_the_warehouse_holds(settings: Settings, pg: psycopg.Connection) -> None:
    seed(pg)
    full(settings)
    slot = capture_slot(settings)
    assert load_state(settings.home).capture_slot == slot
    before = slot_info(pg, slot)
    pg.execute("DELETE FROM impressions WHERE id = 1")
    incremental(settings)
    after = slot_info(pg, slot)
    assert after is not None and before is not None
    assert after.confirmed_flush_lsn != before.confirmed_flush_lsn


def test_a_source_that_only_inserts_does_not_hold_wal_in_the_slot(settings: Settings, pg: psycopg.Connection) -> None:
    """Inserts publish nothing to the slot, so no transaction in its stream marks how far it may advance: the run's
    snapshot does. Before, the slot stayed where the last update or delete left it, and every run decoded all the
    WAL written since (the seed generator only inserts)."""
    seed(pg)
    full(settings)
    slot = capture_slot(settings)
    for hour in range(10, 13):  # three transactions of inserts only
        pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (1, %s)", (f"2026-11-23 {hour}:00:00",))
    written = pg.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    incremental(settings)
    confirmed = pg.execute(
        "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s", (written, slot)
    ).fetchone()
    assert confirmed == (True,)
    assert_equals_source(settings, pg)


def test_the_slot_never_advances_past_the_wal_its_read_could_decode(settings: Settings, pg: psycopg.Connection) -> None:
    """Decoding stops at the WAL flushed when the slot is read. A snapshot's LSN can lie past it (a commit written,
    not yet flushed): the read bounds its advance by the flush position, or that commit would be skipped for good.
    Here the snapshot claims an LSN a GiB ahead of the WAL, and sees every transaction."""
    seed(pg)
    full(settings)
    pg.execute("DELETE FROM impressions WHERE id = 1")
    flushed = lsn_value(pg.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0])
    xmax = int(pg.execute("SELECT pg_current_snapshot()::text").fetchone()[0].split(":")[1])
    ahead = Snapshot("", f"{xmax}:{xmax}:", xmax, xmax, datetime.now(UTC), format_lsn(flushed + 2**30))
    with connect(settings) as conn:
        conn.autocommit = True
        changes = RunCapture(capture_slot(settings), None, trusted=True, conn=conn).read(ahead)
    assert changes is not None and dict(changes.changed)["impressions"] == {1}
    assert changes.advance_to is not None and flushed <= changes.advance_to < flushed + 2**30


def test_a_slot_dropped_and_created_again_is_not_trusted_until_a_full_sync(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """`capture drop`, then `init`: the new slot has the old one's name but not the changes made in between."""
    seed(pg)
    full(settings)
    slot = capture_slot(settings)
    assert run_cli("capture", "drop").exit_code == 0
    pg.execute("UPDATE clicks SET campaign_id = 3 WHERE id = 1")  # in no slot
    assert run_cli("init").exit_code == 0
    assert slot_info(pg, slot) is not None
    result = run_cli("sync")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: replication slot {slot} is past the last sync (")
    assert "it was created again, or advanced by someone else" in result.stderr
    assert ch(settings, "SELECT campaign_id FROM clicks WHERE id = 1") == [(1,)]
    full(settings)
    pg.execute("DELETE FROM impressions WHERE id = 1")
    incremental(settings)
    assert_equals_source(settings, pg)


def test_a_publication_altered_by_hand_stops_incremental_syncs_until_a_full_one(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """Changes a publication does not publish are in no slot: a run would apply none of them, and exit 0."""
    seed(pg)
    full(settings)
    for alter, problem in (
        ("SET (publish = 'insert')", "no longer publishes every update, delete and truncate"),
        ("DROP TABLE clicks", "no longer publishes clicks"),
    ):
        pg.execute(f"ALTER PUBLICATION adpipe {alter}")
        pg.execute("UPDATE clicks SET campaign_id = 3 WHERE id = 1")
        result = run_cli("sync")
        assert result.exit_code == 1
        assert result.stderr.startswith(f"error: publication adpipe {problem}: fact updates and deletes since"), alter
        full(settings)
        pg.execute("UPDATE clicks SET campaign_id = 1 WHERE id = 1")
        incremental(settings)
        assert_equals_source(settings, pg)


def test_a_dropped_slot_stops_incremental_syncs_until_a_full_one(settings: Settings, pg: psycopg.Connection) -> None:
    seed(pg)
    full(settings)
    slot = capture_slot(settings)
    with exclusive_lock(settings.home / "sync.lock", "sync"):  # a sync or a follower running: it keeps its slot
        busy = run_cli("capture", "drop")
    assert (busy.exit_code, busy.stderr.startswith("error: sync is busy: another adpipe process")) == (1, True)
    assert slot_info(pg, slot) is not None
    assert run_cli("capture", "drop").exit_code == 0
    assert slot_info(pg, slot) is None
    result = run_cli("sync")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: replication slot {slot} was dropped: fact updates and deletes since the last sync cannot be read;"
        " run `adpipe sync --mode full` to reload and start change capture again"
    ]
    full(settings)
    assert slot_info(pg, slot) is not None
    pg.execute("DELETE FROM impressions WHERE id = 1")
    incremental(settings)
    assert_equals_source(settings, pg)


@pytest.mark.warehouses("chdb")
def test_a_slot_dropped_after_the_run_checked_it_stops_the_run_with_the_same_line(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """A follower's run checks the slot, then reads it: a slot dropped in between is the same refusal, naming
    `--mode full`, not the server's "does not exist"."""
    seed(pg)
    full(settings)
    slot = capture_slot(settings)
    with run_capture(settings, load_state(settings.home), full=False) as capture:
        assert capture.slot == slot
        pg.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        lsn = pg.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        snapshot = Snapshot("", "1:1:", 1, 1, datetime.now(UTC), lsn)
        with pytest.raises(SyncRefusedError) as refused:
            capture.read(snapshot)
    assert str(refused.value) == (
        f"replication slot {slot} was dropped: fact updates and deletes since the last sync cannot be read;"
        " run `adpipe sync --mode full` to reload and start change capture again"
    )


@pytest.mark.warehouses("chdb")
def test_two_warehouses_with_the_same_database_name_each_get_every_change(
    settings: Settings, pg: psycopg.Connection, tmp_path: Path
) -> None:
    """Slot names are unique server-wide: a second home (its own embedded engine, the same database name, the same
    source) must not share the first one's slot, or the first to advance it skips changes for the other."""
    other = {**os.environ, "ADPIPE_HOME": str(tmp_path / "other"), "ADPIPE_STAGING_DIR": str(tmp_path / "other-st")}
    other.pop("ADPIPE_CLICKHOUSE_URL")
    seed(pg)
    full(settings)
    assert adpipe(other, "sync", "--mode", "full").returncode == 0
    assert pg.execute("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()").fetchone() == (
        2,
    )
    pg.execute("DELETE FROM impressions WHERE id = 1")
    incremental(settings)  # advances this warehouse's slot past the delete
    assert adpipe(other, "sync").returncode == 0
    assert adpipe(other, "reconcile").returncode == 0
    tables = {t["table"]: t for t in json.loads(adpipe(other, "status", "--json").stdout)["tables"]}
    assert (tables["impressions"]["clickhouse_rows"], tables["impressions"]["postgres_rows"]) == (4, 4)
    assert_equals_source(settings, pg)


def test_a_full_sync_moves_off_a_slot_the_state_followed_under_an_older_name(
    settings: Settings, pg: psycopg.Connection
) -> None:
    seed(pg)
    pg.execute("SELECT pg_create_logical_replication_slot('adpipe_old_name', 'pgoutput')")  # made before that run
    full(settings)
    save_state(settings.home, dataclasses.replace(load_state(settings.home), capture_slot="adpipe_old_name"))
    pg.execute("DELETE FROM impressions WHERE id = 1")
    incremental(settings)  # follows the slot the state names
    assert_equals_source(settings, pg)
    full(settings)
    assert slot_info(pg, "adpipe_old_name") is None
    assert load_state(settings.home).capture_slot == capture_slot(settings)
    assert slot_info(pg, capture_slot(settings)) is not None


# Without change capture (ADPIPE_CHANGE_CAPTURE=off here; wal_level=replica and a role without REPLICATION take the
# same path): deleted facts are found by counts, and the sync stops instead of exiting 0 with the warehouse wrong.


def without_capture(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("ADPIPE_CHANGE_CAPTURE", "off")
    return dataclasses.replace(settings, change_capture=False)


def test_without_capture_deleted_facts_stop_the_sync_in_one_line(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    off = without_capture(settings, monkeypatch)
    seed(pg)
    with caplog.at_level(logging.WARNING):
        full(off)
    assert "change capture is off (ADPIPE_CHANGE_CAPTURE is off)" in caplog.text
    assert slot_info(pg, capture_slot(settings)) is None
    for table in ("clicks", "impressions", "campaign", "advertiser"):
        pg.execute(f"DELETE FROM {table}")
    Generator(pg, seed=5).batch(advertisers=1, campaigns=1, impressions=10, ctr=0.5)
    result = run_cli("sync")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: 5 impressions rows synced earlier are no longer in the source, and change capture is off to say"
        " which: run `adpipe sync --repair` to find and remove them, or `adpipe sync --mode full`"
    ]
    incremental(off, on_reset=OnReset.FULL)
    assert_equals_source(off, pg)


def test_without_capture_rows_deleted_alongside_late_rows_are_still_counted(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = without_capture(settings, monkeypatch)
    seed(pg)
    slow = psycopg.connect(pg.info.dsn)
    slow.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")  # id 4, late
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-21 09:30:00')")  # id 5
    full(off)
    slow.commit()
    slow.close()
    pg.execute("DELETE FROM clicks WHERE id = 1")  # one row gone, one late row arrived below the high-water mark
    with pytest.raises(SyncRefusedError, match=r"1 clicks rows synced earlier are no longer in the source"):
        incremental(off)


@pytest.mark.warehouses("http")  # the killed sync is a process of its own; the double lets this one share its engine
@pytest.mark.parametrize("point", ["retracted", "loaded", "committed"])
def test_a_sync_killed_between_its_load_and_the_slot_advance_converges(
    settings: Settings, pg: psycopg.Connection, point: str
) -> None:
    seed(pg)
    full(settings)
    slot = capture_slot(settings)
    pg.execute("UPDATE clicks SET campaign_id = 3 WHERE id = 1")
    pg.execute("DELETE FROM impressions WHERE id IN (2, 4)")
    pg.execute("UPDATE impressions SET created_at = '2026-10-01 00:00:00' WHERE id = 5")
    before = slot_info(pg, slot)
    killed = subprocess.run(
        [sys.executable, "-m", "pipeline", "sync"],
        env={**os.environ, "ADPIPE_TEST_KILL_AT": point},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert slot_info(pg, slot).confirmed_flush_lsn == before.confirmed_flush_lsn  # not advanced
    incremental(settings)  # loads (or finds loaded) the killed run, then runs its own
    assert_equals_source(settings, pg)
    assert slot_info(pg, slot).confirmed_flush_lsn != before.confirmed_flush_lsn
    again = incremental(settings)
    assert (again.tables["impressions"].retracted, again.tables["clicks"].retracted) == (0, 0)
    assert_equals_source(settings, pg)


def transaction(xid: int, end: int, **changed: frozenset[int]) -> DecodedTransaction:
    return DecodedTransaction(xid, end - 8, end, dict(changed), frozenset())


def test_the_slot_advances_over_the_transactions_the_snapshot_sees_and_stops_at_the_first_it_does_not() -> None:
    # Snapshot 100:105:102 — ids below 100 ended; 102 was running; 105 and above had not ended. Its LSN: 6,000.
    stream = [
        transaction(99, 1_000, clicks=frozenset({1})),
        transaction(101, 2_000, impressions=frozenset({7})),
        transaction(102, 3_000, impressions=frozenset({8})),  # committed after the snapshot
        transaction(103, 4_000, clicks=frozenset({2})),  # seen, but after one that is not
        DecodedTransaction(104, 4_992, 5_000, {}, frozenset({"clicks"})),
    ]
    changes = collect(iter(stream), "100:105:102", 6_000)
    assert changes.advance_to == 2_000
    assert changes.truncated == frozenset()  # the truncation lies past the first transaction not seen
    assert dict(changes.changed) == {"impressions": {7, 8}, "clicks": {1, 2}}  # every id is read again
    assert changes.transactions == 5


def test_when_the_snapshot_sees_every_transaction_the_slot_advances_to_the_snapshot() -> None:
    """Past the transactions that published nothing (inserts), which the stream does not hold."""
    seen = [transaction(99, 1_000, clicks=frozenset({1})), transaction(101, 2_000, impressions=frozenset({7}))]
    assert collect(iter(seen), "100:105:102", 6_000).advance_to == 6_000
    truncation = DecodedTransaction(104, 4_992, 5_000, {}, frozenset({"clicks"}))
    assert collect(iter([truncation]), "100:105:", 6_000).truncated == {"clicks"}
    # A commit record that starts before the snapshot's LSN and ends after it: past its end.
    assert collect(iter([transaction(101, 6_010)]), "100:105:", 6_000).advance_to == 6_010
    nothing = Changes(MappingProxyType({"impressions": frozenset(), "clicks": frozenset()}), advance_to=6_000)
    assert collect(iter([]), "100:105:", 6_000) == nothing


def test_a_32_bit_transaction_id_is_widened_next_to_the_snapshot() -> None:
    epoch = 3 << 32
    xmin, xmax = epoch - 10, epoch + 5  # the snapshot straddles a wraparound of the 32-bit counter
    assert visible(2**32 - 20, xmin, xmax, frozenset())  # before xmin, in the previous epoch
    assert visible(2, xmin, xmax, frozenset())  # between xmin and xmax, in this epoch
    assert not visible(2, xmin, xmax, frozenset({epoch + 2}))  # running when the snapshot was taken
    assert not visible(6, xmin, xmax, frozenset())  # at or past xmax: after the snapshot
    assert not visible(5, xmin, xmax, frozenset())


def test_without_capture_repair_finds_updates_and_deletes_bucket_by_bucket(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    off = without_capture(settings, monkeypatch)
    seed(pg)
    pg.execute(  # ids 6-25004: buckets of 10,000 ids are 0-9999, 10000-19999, 20000-
        "INSERT INTO impressions (campaign_id, created_at)"
        " SELECT 1 + n % 3, timestamp '2026-11-10' + n * interval '1 second' FROM generate_series(1, 24999) AS n"
    )
    full(off)
    pg.execute("UPDATE impressions SET campaign_id = 3 WHERE id = 12345")  # bucket 1
    pg.execute("UPDATE clicks SET created_at = '2026-11-25 00:00:00' WHERE id = 2")
    with caplog.at_level(logging.WARNING):
        incremental(off)  # an update in place: the counts cannot see it
    assert "fact updates are not seen" in caplog.text
    assert facts_ch(settings, "impressions") != facts_pg(pg, "impressions")
    pg.execute("DELETE FROM impressions WHERE id = 20001")  # bucket 2
    result = incremental(off, repair=True)
    assert (result.tables["impressions"].retracted, result.tables["clicks"].retracted) == (2, 1)
    assert (result.tables["impressions"].loaded, result.tables["clicks"].loaded) == (1, 1)
    assert_equals_source(off, pg)
    again = incremental(off, repair=True)
    assert (again.tables["impressions"].retracted, again.tables["clicks"].retracted) == (0, 0)


def test_a_role_without_replication_syncs_without_capture_and_says_what_to_grant(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seed(pg)
    role = f"adpipe_r_{settings.clickhouse_database[2:]}"
    pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader-only'")
    pg.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public, referral TO {role}")
    pg.execute(f"GRANT USAGE ON SCHEMA referral TO {role}")
    try:
        url = urlsplit(settings.postgres_url)
        netloc = f"{role}:reader-only@{url.hostname}:{url.port}"
        monkeypatch.setenv("ADPIPE_POSTGRES_URL", urlunsplit(url._replace(netloc=netloc)))
        as_reader = load_settings()
        with caplog.at_level(logging.WARNING):
            full(as_reader)
        assert f"role {role} lacks the REPLICATION attribute: run ALTER ROLE {role} REPLICATION" in caplog.text
        assert load_state(settings.home).capture_slot is None
        pg.execute("DELETE FROM clicks WHERE id = 1")
        result = run_cli("sync")
        assert result.exit_code == 1
        assert result.stderr.startswith("error: 1 clicks rows synced earlier are no longer in the source")
        assert "reader-only" not in result.stderr + caplog.text
    finally:
        pg.execute(f"DROP OWNED BY {role}")
        pg.execute(f"DROP ROLE {role}")


def test_status_warns_when_the_slot_retains_more_wal_than_the_threshold(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(pg)
    full(settings)
    monkeypatch.setenv("ADPIPE_CAPTURE_LAG_WARNING_BYTES", "0")
    status = run_cli("status")
    assert status.exit_code == 0, status.stderr
    assert "Above ADPIPE_CAPTURE_LAG_WARNING_BYTES: is the sync running?" in " ".join(status.stdout.split())


@pytest.mark.warehouses("chdb")
def test_a_slot_that_lost_its_wal_stops_incremental_syncs_until_a_full_one(
    settings: Settings, pg: psycopg.Connection
) -> None:
    seed(pg)
    full(settings)
    slot = capture_slot(settings)
    pg.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    pg.execute("SELECT pg_reload_conf()")
    try:
        pg.execute("UPDATE clicks SET campaign_id = 3 WHERE id = 1")  # a change the slot can no longer deliver
        for _ in range(3):  # past the limit: the checkpoint removes WAL the slot still needs
            pg.execute("SELECT pg_switch_wal()")
            pg.execute("CREATE TEMP TABLE filler AS SELECT repeat('x', 1000) AS t FROM generate_series(1, 20000)")
            pg.execute("DROP TABLE filler")
        pg.execute("CHECKPOINT")
        assert slot_info(pg, slot).wal_status == "lost"
    finally:
        pg.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        pg.execute("SELECT pg_reload_conf()")
    result = run_cli("sync")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: replication slot {slot} lost WAL it had not delivered yet (max_slot_wal_keep_size): fact updates"
        " and deletes since the last sync cannot be read; run `adpipe sync --mode full` to reload and start change"
        " capture again"
    ]
    full(settings)
    assert slot_info(pg, slot).wal_status in {"reserved", "extended"}
    assert_equals_source(settings, pg)


def backends_of(pg: psycopg.Connection, role: str) -> int:
    return pg.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)).fetchone()[0]


@pytest.mark.warehouses("chdb")
def test_a_role_limited_to_the_documented_connections_runs_full_and_incremental_syncs(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/design.md: with the defaults, a run holds at most 7 connections to Postgres — the coordinator, change
    capture's, and one per partition of each fact table's read plus one for the dimensions or the rows read again.
    Postgres refuses a role any connection past its CONNECTION LIMIT, so a run needing more fails here.

    The reads are made to overlap as they can on a big source: chunks of 2 rows split into 2 partitions (a source
    this small would otherwise be read in one partition), and the first reads of each run held until all of them
    run at once: both partitions of both fact tables, and in the incremental run the changed rows read again."""
    import threading

    from pipeline.catalog import FIRST_ID, SOURCE_TABLES
    from pipeline.source.capture import ensure_publication
    from pipeline.source.postgres import ArrowConnection
    from pipeline.sync.extract import SourceReader

    seed(pg)
    ensure_publication(pg, SOURCE_TABLES)  # by the tables' owner: the limited role only reads, and reads the slot
    role = f"adpipe_l_{settings.clickhouse_database[2:]}"
    pg.execute(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'limited' CONNECTION LIMIT 7")
    pg.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public, referral TO {role}")
    pg.execute(f"GRANT USAGE ON SCHEMA referral TO {role}")
    monkeypatch.setattr(SourceReader, "_partitions_for", lambda self, rows: self.partitions)
    real_read = ArrowConnection.read_arrow
    lock = threading.Lock()
    hold: dict[str, object] = {"barrier": None, "reads": 0}

    def hold_reads(count: int) -> threading.Barrier:
        """The next `count` reads wait for each other: they pass only all running at once."""
        hold["barrier"], hold["reads"] = threading.Barrier(count, timeout=10), count
        return hold["barrier"]

    def read_arrow(self: ArrowConnection, query: str) -> object:
        if f"id < {FIRST_ID}" in query:  # a fact table's first read, alone on its thread: the rows below the id sync
            return real_read(self, query)
        with lock:
            barrier, hold["reads"] = (hold["barrier"], hold["reads"] - 1) if hold["reads"] else (None, 0)
        if barrier is not None:
            barrier.wait()
        return real_read(self, query)

    monkeypatch.setattr(ArrowConnection, "read_arrow", read_arrow)
    try:
        url = urlsplit(settings.postgres_url)
        monkeypatch.setenv(
            "ADPIPE_POSTGRES_URL", urlunsplit(url._replace(netloc=f"{role}:limited@{url.hostname}:{url.port}"))
        )
        limited = load_settings()
        hold_reads(4)
        sync(limited, SyncOptions(mode=Mode.FULL, chunk_rows=2))
        assert load_state(settings.home).capture_slot is not None  # change capture on: its connection was held
        pg.execute("UPDATE clicks SET campaign_id = 2 WHERE id = 1")
        pg.execute("DELETE FROM impressions WHERE id = 2")
        pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (1, '2026-11-23 09:00:00'), (2, now())")
        pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (1, '2026-11-23 09:00:10'), (2, now())")
        # The full run's connections are closed, but the server counts each until its backend has exited.
        wait_until(lambda: backends_of(pg, role) == 0, 10, "the full run's backends to exit")
        hold_reads(5)
        result = incremental(limited, chunk_rows=2)
        assert (result.tables["clicks"].retracted, result.tables["impressions"].retracted) == (1, 1)
        assert (result.tables["clicks"].loaded, result.tables["impressions"].loaded) == (3, 2)  # 1 click moved
        assert_equals_source(limited, pg)
    finally:
        pg.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        pg.execute(f"DROP OWNED BY {role}")
        pg.execute(f"DROP ROLE {role}")
