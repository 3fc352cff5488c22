"""The sync commands as a user runs them: output, exit codes, JSON."""

from __future__ import annotations

import json
import logging
import re

import psycopg
import pytest

from pipeline.config import Settings
from pipeline.source.postgres import postgres_url
from pipeline.sync.stage import list_runs
from pipeline.warehouse import client as clickhouse
from tests.conftest import run_cli
from tests.harness import capture_slot
from tests.test_sync import per_campaign_ch, seed_hand_built

pytestmark = pytest.mark.warehouses  # each test that uses `settings` runs on chdb, http and server


WAREHOUSE_SCHEMA = [
    ("advertiser", "ReplacingMergeTree"),
    ("campaign", "ReplacingMergeTree"),
    ("campaign_daily", "SummingMergeTree"),
    ("campaign_hourly", "SummingMergeTree"),
    ("clicks", "MergeTree"),
    ("clicks_daily_mv", "MaterializedView"),
    ("clicks_hourly_mv", "MaterializedView"),
    ("clicks_retracted", "MergeTree"),
    ("clicks_retracted_daily_mv", "MaterializedView"),
    ("clicks_retracted_hourly_mv", "MaterializedView"),
    ("current_advertiser", "View"),
    ("current_campaign", "View"),
    ("impressions", "MergeTree"),
    ("impressions_daily_mv", "MaterializedView"),
    ("impressions_hourly_mv", "MaterializedView"),
    ("impressions_retracted", "MergeTree"),
    ("impressions_retracted_daily_mv", "MaterializedView"),
    ("impressions_retracted_hourly_mv", "MaterializedView"),
    ("live_advertiser", "View"),
    ("live_campaign", "View"),
    ("quarantine", "ReplacingMergeTree"),
    ("referral_events", "MergeTree"),
    ("sync_runs", "ReplacingMergeTree"),
]
"""Every table and view of schemas/clickhouse/*.sql, with its engine."""

SOURCE_SCHEMA = [
    ("public", "advertiser"),
    ("public", "campaign"),
    ("public", "clicks"),
    ("public", "impressions"),
    ("referral", "click_through_rate"),
    ("referral", "clicks"),
    ("referral", "page_loads"),
    ("referral", "unique_user_clicks"),
]
"""Every table of schemas/postgres/*.sql."""


def test_init_is_idempotent(settings: Settings, pg: psycopg.Connection) -> None:
    """A second `init` over a synced warehouse leaves the schema as the first made it and every synced row in place."""
    assert run_cli("init").exit_code == 0
    seed_hand_built(pg)
    assert run_cli("sync", "--mode", "full").exit_code == 0
    result = run_cli("init")
    assert result.exit_code == 0, result.stderr
    assert f"database {settings.clickhouse_database}" in result.stdout
    slot = capture_slot(settings)
    assert f"Change capture: replication slot {slot} is in place." in " ".join(result.stdout.split())
    assert pg.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() == (1,)

    client = clickhouse.connect(settings)
    listed = "SELECT name, engine FROM system.tables WHERE database = currentDatabase() ORDER BY name"
    assert client.query(listed).result_rows == WAREHOUSE_SCHEMA
    source = pg.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema IN ('public', 'referral') ORDER BY 1, 2"
    ).fetchall()
    assert source == SOURCE_SCHEMA
    # What seed_hand_built wrote and the sync loaded is all still there: 2 advertisers, 3 campaigns,
    # 3 + 1 impressions and 2 clicks, with their daily aggregates.
    tables = ("advertiser FINAL", "campaign FINAL", "impressions", "clicks")
    assert [client.command(f"SELECT count() FROM {table}") for table in tables] == [2, 3, 4, 2]
    daily = "SELECT campaign_id, sum(impressions), sum(clicks) FROM campaign_daily GROUP BY 1 ORDER BY 1"
    assert client.query(daily).result_rows == [(1, 3, 2), (2, 1, 0)]


def test_a_first_sync_on_a_source_without_its_schema_creates_it(settings: Settings) -> None:
    """A new user's first command may be `sync`, before `init` or `generate`: the source schema is made, as every
    source command makes it, and the change-capture publication is created on it rather than failing without it."""
    result = run_cli("sync", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["mode"] == "full"
    with psycopg.connect(postgres_url(settings), autocommit=True) as pg:
        source = pg.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema IN ('public', 'referral') ORDER BY 1, 2"
        ).fetchall()
        published = pg.execute("SELECT tablename FROM pg_publication_tables ORDER BY 1").fetchall()
    assert source == SOURCE_SCHEMA
    assert published == [("advertiser",), ("campaign",), ("clicks",), ("impressions",)]


def test_sync_json_summary_and_status(settings: Settings, pg: psycopg.Connection) -> None:
    seed_hand_built(pg)
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (NULL, '2026-11-21 01:00:00')")  # id 5
    result = run_cli("sync", "--mode", "full", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["mode"] == "full"
    assert summary["tables"]["impressions"] == {
        "extracted": 5,
        "loaded": 4,
        "quarantined": 1,
        "retracted": 0,
        "min_id": 1,
        "max_id": 4,
    }
    assert summary["tables"]["clicks"]["loaded"] == 2

    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")
    status = run_cli("status")
    assert status.exit_code == 0, status.stderr
    lines = {line.split("│")[1].strip(): line for line in status.stdout.splitlines() if line.count("│") > 2}
    # Table, PG rows, PG max id, CH rows, CH max id, Behind, Quarantined
    assert [c.strip() for c in lines["impressions"].split("│")[2:8]] == ["5", "5", "4", "4", "0", "1"]
    assert [c.strip() for c in lines["clicks"].split("│")[2:8]] == ["3", "3", "2", "2", "1", "0"]
    assert f"Last successful run: {summary['run_id']}" in status.stdout
    capture_line = re.search(
        r"Change capture: replication slot (\S+), ([\d.,]+) MiB of WAL retained \((\w+)\)\.",
        " ".join(status.stdout.split()),
    )
    assert capture_line is not None, status.stdout
    assert capture_line[1] == capture_slot(settings) and capture_line[3] == "reserved"


UNREACHABLE = [("ADPIPE_POSTGRES_URL", "Postgres"), ("ADPIPE_POSTGRES_REPLICA_URL", "the Postgres replica")]


@pytest.mark.parametrize(("variable", "server"), UNREACHABLE)
def test_sync_against_unreachable_postgres_is_one_line(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, variable: str, server: str
) -> None:
    monkeypatch.setenv(variable, "postgresql://adpipe:s3cret@127.0.0.1:1/nowhere")
    result = run_cli("sync")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert f"cannot reach {server} at postgresql://adpipe:***@127.0.0.1:1/nowhere" in result.stderr
    assert "s3cret" not in result.stderr
    assert not (settings.home / "last_synced_ids.json").exists()
    assert list(settings.staging_dir.glob("*")) == []


@pytest.mark.parametrize(
    ("option", "value"), [("--chunk-rows", "0"), ("--partitions", "0"), ("--partitions", "-2"), ("--keep", "0")]
)
def test_invalid_sync_options_are_refused_before_the_run(settings: Settings, option: str, value: str) -> None:
    result = run_cli("sync", option, value)
    assert (result.exit_code, result.stderr) == (1, f"error: {option} must be 1 or more, got {value}\n")
    assert not settings.staging_dir.exists() or not any(settings.staging_dir.iterdir())


def test_prune_keeps_what_the_warehouse_needs(settings: Settings, pg: psycopg.Connection) -> None:
    seed_hand_built(pg)
    for mode in ("full", "incremental", "full", "incremental"):
        assert run_cli("sync", "--mode", mode).exit_code == 0
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (2, '2026-11-21 09:00:00')")
    for _ in range(3):  # one run with the new click, then two that stage nothing, like a follower's idle runs
        assert run_cli("sync").exit_code == 0
    runs = list_runs(settings.staging_dir)
    result = run_cli("snapshots", "prune", "--keep", "1")
    assert result.exit_code == 0, result.stderr
    # The first full and its incremental, and the second full's runs that staged nothing, but the last (the state's).
    assert "Removed 4 staged runs." in result.stdout
    kept = [run.run_id for run in list_runs(settings.staging_dir)]
    assert kept == [runs[2].run_id, runs[4].run_id, runs[6].run_id]
    assert [run.split("-")[1] for run in kept] == ["full", "incremental", "incremental"]
    assert run_cli("replay").exit_code == 0  # what is left rebuilds the warehouse
    assert run_cli("reconcile").exit_code == 0
    assert per_campaign_ch(settings, "clicks") == {1: 2, 2: 1}


def test_sync_keep_zero_is_refused_before_anything_runs(settings: Settings, pg: psycopg.Connection) -> None:
    seed_hand_built(pg)
    result = run_cli("sync", "--keep", "0")
    assert (result.exit_code, result.stderr) == (1, "error: --keep must be 1 or more, got 0\n")
    assert list(settings.staging_dir.glob("*")) == []  # no run was staged


def test_sync_keep_prunes_after_the_run(settings: Settings, pg: psycopg.Connection) -> None:
    seed_hand_built(pg)
    for mode in ("full", "incremental", "full"):
        assert run_cli("sync", "--mode", mode).exit_code == 0
    result = run_cli("sync", "--keep", "1", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert len(summary["pruned_runs"]) == 2  # the first full and its incremental; the second full is the base
    assert [run.run_id for run in list_runs(settings.staging_dir)][-1] == summary["run_id"]


def test_prune_waits_for_no_sync(settings: Settings) -> None:
    """Pruning takes the sync lock: it never deletes runs while a sync publishes or loads them."""
    from pipeline.locks import exclusive_lock

    with exclusive_lock(settings.home / "sync.lock", "sync"):
        result = run_cli("snapshots", "prune", "--keep", "1")
    assert result.exit_code == 1
    assert "sync is busy: another adpipe process" in result.stderr


def test_sync_verify_reconciles_after_loading(settings: Settings, pg: psycopg.Connection) -> None:
    seed_hand_built(pg)
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (NULL, '2026-11-21 01:00:00')")  # id 5
    result = run_cli("sync", "--mode", "full", "--verify")
    assert result.exit_code == 0, result.stderr
    # Rich wraps long cells over several lines; without the box drawing the row reads as one sentence.
    text = " ".join(re.sub(r"[│┃]", " ", result.stdout).split())
    assert "rows impressions pass Postgres 5 = ClickHouse 4 + quarantined 1 = snapshots 4 + quarantined 1" in text
    assert "All checks pass." in result.stdout


@pytest.mark.warehouses("chdb")
def test_a_run_the_warehouse_will_not_record_as_running_loads_nothing(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """The next sync checks that the warehouse holds the last committed run's row: a run committed without one would
    look like a warehouse restored from an older backup. So a run that cannot record itself stops before loading."""
    seed_hand_built(pg)
    assert run_cli("sync", "--mode", "full").exit_code == 0
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (1, '2026-01-05 12:00:00')")
    client = clickhouse.connect(settings)
    before = client.command("SELECT count() FROM impressions")
    client.command("ALTER TABLE sync_runs ADD COLUMN refused UInt8 DEFAULT throwIf(status = 'running')")
    refused = run_cli("sync")
    assert refused.exit_code == 1
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: "), refused.stderr
    assert client.command("SELECT count() FROM impressions") == before
    client.command("ALTER TABLE sync_runs DROP COLUMN refused")
    assert run_cli("sync").exit_code == 0
    assert client.command("SELECT count() FROM impressions") == before + 1


@pytest.mark.warehouses("chdb")
def test_a_run_the_warehouse_will_not_record_as_done_says_so_in_one_warning(
    settings: Settings, pg: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Its rows are committed and right: exit 0, one warning (its traceback only at debug), and the next run goes
    on."""
    seed_hand_built(pg)
    assert run_cli("sync", "--mode", "full").exit_code == 0
    client = clickhouse.connect(settings)
    client.command("ALTER TABLE sync_runs ADD COLUMN refused UInt8 DEFAULT throwIf(status = 'success')")
    caplog.clear()
    assert run_cli("sync").exit_code == 0
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert re.fullmatch(r"could not record run \S+-incremental as success in sync_runs: .+", warning.getMessage())
    assert warning.exc_info is None
    client.command("ALTER TABLE sync_runs DROP COLUMN refused")
    assert run_cli("sync").exit_code == 0
