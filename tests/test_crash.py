"""SIGKILL a real `adpipe sync` process at several points; the next run must converge to exactly the source.

With the embedded engine, the killed processes use their own chDB data directory (chDB allows one process
per directory, and this test process holds the session's); against a server (or the HTTP double, which
serves from this process) they share the test's warehouse. The check runs in a subprocess too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pipeline.config import Settings
from pipeline.source.generate import Generator

pytestmark = pytest.mark.warehouses  # each test that uses `settings` runs on chdb, http and server

COUNT_SCRIPT = """
import json
from pipeline.warehouse import client as clickhouse
from pipeline.config import load_settings
client = clickhouse.connect(load_settings())
q = lambda sql: client.query(sql).result_rows
print(json.dumps({
    "impressions": dict(q("SELECT campaign_id, count() FROM impressions GROUP BY campaign_id")),
    "clicks": dict(q("SELECT campaign_id, count() FROM clicks GROUP BY campaign_id")),
    "daily_impressions": dict(q("SELECT campaign_id, sum(impressions) FROM campaign_daily GROUP BY campaign_id")),
    "daily_clicks": dict(q("SELECT campaign_id, sum(clicks) FROM campaign_daily GROUP BY campaign_id")),
    "runs": dict(q("SELECT status, uniqExact(run_id) FROM sync_runs FINAL GROUP BY status")),
}))
"""


def _env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    if settings.clickhouse_is_embedded:
        env["ADPIPE_CLICKHOUSE_URL"] = f"chdb://{tmp_path / 'killed-clickhouse'}"
    return env


def _sync_killed_after(seconds: float, mode: str, env: dict[str, str]) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sync", "--mode", mode, "--chunk-rows", "20000"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(seconds)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _per_campaign(pg: psycopg.Connection, table: str) -> dict[str, int]:
    rows = pg.execute(f"SELECT campaign_id, count(*) FROM {table} GROUP BY campaign_id").fetchall()
    return {str(campaign): count for campaign, count in rows}


def test_sigkill_at_any_point_then_sync_converges(settings: Settings, pg: psycopg.Connection, tmp_path: Path) -> None:
    env = _env(settings, tmp_path)
    generator = Generator(pg, seed=21)
    generator.batch(advertisers=2, campaigns=3, impressions=20_000, ctr=0.1)
    for delay in (1.5, 2.5, 3.5):
        _sync_killed_after(delay, "full", env)
    subprocess.run(
        [sys.executable, "-m", "pipeline", "sync", "--mode", "full"], env=env, check=True, capture_output=True
    )
    generator.batch(advertisers=1, campaigns=3, impressions=20_000, ctr=0.1)
    for delay in (1.5, 2.5, 3.5):
        _sync_killed_after(delay, "incremental", env)
    subprocess.run([sys.executable, "-m", "pipeline", "sync"], env=env, check=True, capture_output=True)

    counted = subprocess.run([sys.executable, "-c", COUNT_SCRIPT], env=env, check=True, capture_output=True, text=True)
    warehouse = json.loads(counted.stdout)
    impressions, clicks = _per_campaign(pg, "impressions"), _per_campaign(pg, "clicks")
    assert sum(impressions.values()) == 9 * 20_000
    assert warehouse["impressions"] == impressions
    assert warehouse["daily_impressions"] == impressions
    assert warehouse["clicks"] == clicks
    assert warehouse["daily_clicks"] == {campaign: clicks.get(campaign, 0) for campaign in impressions}
    # Every run that got as far as recording itself says how it ended (some finish before their kill comes).
    runs = warehouse["runs"]
    assert set(runs) <= {"success", "recovered", "interrupted"} and 2 <= runs["success"] <= sum(runs.values()) <= 8
