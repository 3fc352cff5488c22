"""`adpipe status --json`: the figures of `status`, the rows each table was sent and the run-duration histogram.

The CLI runs in child processes, as a scheduler or the exporter's scrape would: on the embedded engine each child
opens a ClickHouse data directory of this test's own (chDB serves one process per directory), otherwise the
warehouse under test. Expected numbers are the rows written here by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from pipeline.analytics.status import RUN_DURATION_BUCKETS, run_durations
from pipeline.config import Settings
from pipeline.warehouse import client as clickhouse
from pipeline.warehouse.schema import apply_schema
from tests.harness import capture_slot

pytestmark = pytest.mark.warehouses  # each test that uses `settings` runs on chdb, http and server

TABLE_FIELDS = [
    "table",
    "postgres_rows",
    "postgres_max_id",
    "clickhouse_rows",
    "clickhouse_max_id",
    "behind",
    "quarantined",
    "rows_synced",
]


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    if settings.clickhouse_is_embedded:
        env["ADPIPE_CLICKHOUSE_URL"] = f"chdb://{tmp_path / 'child-clickhouse'}"
    return env


def adpipe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def status_json(env: dict[str, str]) -> dict:
    done = adpipe(env, "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def by_table(document: dict) -> dict[str, dict]:
    assert [list(t) for t in document["tables"]] == [TABLE_FIELDS] * 4
    return {t["table"]: {k: v for k, v in t.items() if k != "table"} for t in document["tables"]}


def row(pg_rows: int, pg_max: int, ch_rows: int, ch_max: int, behind: int, quarantined: int, synced: int) -> dict:
    return dict(zip(TABLE_FIELDS[1:], (pg_rows, pg_max, ch_rows, ch_max, behind, quarantined, synced), strict=True))


def utc(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


def assert_histogram(histogram: dict, runs: int) -> None:
    assert [b["le"] for b in histogram["buckets"]] == [*RUN_DURATION_BUCKETS, "+Inf"]
    counts = [b["count"] for b in histogram["buckets"]]
    assert counts == sorted(counts), counts  # cumulative
    assert counts[-1] == histogram["count"] == runs
    assert histogram["sum"] > 0


def seed(pg: psycopg.Connection) -> None:
    """3 advertisers, 4 campaigns, 6 valid impressions and 1 without a campaign (quarantined), 3 clicks."""
    pg.execute(
        "INSERT INTO advertiser (name, updated_at) VALUES ('Acme', now()), ('Globex', now()), ('Initech', now())"
    )
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id) VALUES "
        "('Spring', 1.50, 100.00, '2026-11-01', '2026-11-30', 1), "
        "('Summer', 2.00, 200.00, '2026-11-01', '2026-11-30', 1), "
        "('Autumn', 0.75, 50.00, '2026-11-01', '2026-11-30', 2), "
        "('Winter', 1.00, 80.00, '2026-11-01', '2026-11-30', 3)"
    )
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at) VALUES "
        "(1, '2026-11-20 10:00:00'), (1, '2026-11-20 11:00:00'), (2, '2026-11-20 12:00:00'), "
        "(3, '2026-11-20 13:00:00'), (4, '2026-11-20 14:00:00'), (4, '2026-11-20 15:00:00'), "
        "(NULL, '2026-11-20 16:00:00')"
    )
    pg.execute(
        "INSERT INTO clicks (campaign_id, created_at) VALUES "
        "(1, '2026-11-20 10:00:30'), (2, '2026-11-20 12:00:30'), (4, '2026-11-20 14:00:30')"
    )


def test_status_json_counts_rows_runs_and_lag(settings: Settings, pg: psycopg.Connection, env: dict[str, str]) -> None:
    seed(pg)
    synced = adpipe(env, "sync", "--mode", "full", "--json")
    assert synced.returncode == 0, synced.stderr
    run_id = json.loads(synced.stdout)["run_id"]
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (1, '2026-11-21 09:00:00'), (2, now())")

    document = status_json(env)
    assert list(document) == [
        "tables",
        "last_run_id",
        "last_success_at",
        "last_snapshot_at",
        "lag_seconds",
        "capture",
        "run_duration_seconds",
    ]
    assert by_table(document) == {
        "advertiser": row(3, 3, 3, 3, 0, 0, 3),
        "campaign": row(4, 4, 4, 4, 0, 0, 4),
        "impressions": row(9, 9, 6, 6, 2, 1, 6),  # ids 8 and 9 wait for the next run; id 7 is in quarantine
        "clicks": row(3, 3, 3, 3, 0, 0, 3),
    }
    assert document["last_run_id"] == run_id
    snapshot, success = utc(document["last_snapshot_at"]), utc(document["last_success_at"])
    assert snapshot <= success <= datetime.now(UTC)
    assert 0 <= document["lag_seconds"] < 120
    assert document["capture"] == {
        "slot": capture_slot(settings, env),
        "present": True,
        "wal_status": "reserved",
        "retained_bytes": document["capture"]["retained_bytes"],
        "warning_bytes": settings.capture_lag_warning_bytes,
        "lagging": False,
    }
    assert isinstance(document["capture"]["retained_bytes"], int)
    assert_histogram(document["run_duration_seconds"], runs=1)

    again = adpipe(env, "sync", "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)["run_id"]
    document = status_json(env)
    assert by_table(document) == {
        "advertiser": row(3, 3, 3, 3, 0, 0, 3),  # unchanged dimensions: the incremental run loads none
        "campaign": row(4, 4, 4, 4, 0, 0, 4),
        "impressions": row(9, 9, 8, 9, 0, 1, 6 + 2),
        "clicks": row(3, 3, 3, 3, 0, 0, 3),  # no new clicks: the counter stays
    }
    assert document["last_run_id"] == second
    assert utc(document["last_snapshot_at"]) > snapshot
    assert_histogram(document["run_duration_seconds"], runs=2)


def test_status_json_before_any_sync(settings: Settings, pg: psycopg.Connection, env: dict[str, str]) -> None:
    """Before the warehouse exists, `--json` fails in the same one line as the tables; after `init`, no run yet."""
    for args in (("status",), ("status", "--json")):
        refused = adpipe(env, *args)
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr.count("\n") == 1 and "has no KPI tables yet" in refused.stderr, refused.stderr

    assert adpipe(env, "init").returncode == 0
    seed(pg)
    document = status_json(env)
    assert by_table(document)["impressions"] == {
        "postgres_rows": 7,
        "postgres_max_id": 7,
        "clickhouse_rows": 0,
        "clickhouse_max_id": None,
        "behind": 7,
        "quarantined": 0,
        "rows_synced": 0,
    }
    for field in ("last_run_id", "last_success_at", "last_snapshot_at", "lag_seconds"):
        assert document[field] is None, field
    histogram = document["run_duration_seconds"]
    assert histogram == {
        "buckets": [{"le": bound, "count": 0} for bound in (*RUN_DURATION_BUCKETS, "+Inf")],
        "sum": 0.0,
        "count": 0,
    }


def test_run_durations_count_successful_runs_to_the_microsecond(settings: Settings) -> None:
    """Hand-written run log rows: per run the span from its first start to its last finish, newest row per table."""
    client = clickhouse.connect(settings)
    apply_schema(client)
    runs = [
        # run, table, started, finished, status, updated
        ("a", "advertiser", "10:00:00.000000", "10:00:00.300000", "success", 1),
        ("a", "clicks", "10:00:00.000000", "10:00:00.250000", "success", 1),  # the run took 0.3 s, not 0.25
        ("b", "advertiser", "11:00:00.000000", "11:00:00.500000", "success", 1),  # exactly on a bound: in it
        ("c", "advertiser", "12:00:00.000000", "12:00:00.500001", "success", 1),  # a microsecond above it
        ("d", "advertiser", "13:00:00.000000", "13:00:45.000000", "success", 1),
        ("e", "advertiser", "14:00:00.000000", "15:06:40.000000", "success", 1),  # 4000 s: only in +Inf
        ("f", "advertiser", "16:00:00.000000", "16:00:01.000000", "failed", 1),
        ("g", "advertiser", "17:00:00.000000", "18:00:00.000000", "recovered", 1),
        ("h", "advertiser", "19:00:00.000000", None, "running", 1),
        ("h", "advertiser", "19:00:00.000000", "19:00:02.000000", "success", 2),  # replaces its `running` row
        ("i", "advertiser", "20:00:00.000000", "20:00:03.000000", "success", 1),
        ("i", "advertiser", "20:00:00.000000", None, "interrupted", 2),
    ]

    def moment(time: str | None) -> str:
        return "NULL" if time is None else f"'2026-11-20 {time}'"

    values = ", ".join(
        f"('{run}', '{table}', 'full', 0, 0, 0, NULL, NULL, {moment(started)}, {moment(finished)}, '{status}', NULL,"
        f" {moment(f'0{updated}:00:00')})"
        for run, table, started, finished, status, updated in runs
    )
    client.command(f"INSERT INTO sync_runs VALUES {values}")

    durations = run_durations(client)
    assert durations.buckets == RUN_DURATION_BUCKETS == (0.5, 1, 2, 5, 10, 30, 60, 300, 1800)
    # Runs a 0.3, b 0.5, c 0.500001, d 45, e 4000, h 2 seconds.
    assert durations.counts == (2, 3, 4, 4, 4, 4, 5, 5, 5, 6)
    assert durations.count == 6
    assert durations.sum == pytest.approx(0.3 + 0.5 + 0.500001 + 45 + 4000 + 2, abs=1e-9)
