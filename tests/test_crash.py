"""SIGKILL a real `adpipe sync` process at each named kill point; the next sync must converge to exactly the source.

`ADPIPE_TEST_KILL_AT` (pipeline/killpoints.py) makes the sync kill itself at a point of its own code, so every
test lands where it says, on any machine. A killed process exits by SIGKILL only if it reached its point.

With the embedded engine, the adpipe processes use their own chDB data directory (chDB allows one process
per directory, and this test process holds the session's); on the HTTP double they share the test's warehouse.
The warehouse is read in a subprocess too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pipeline.config import Settings
from pipeline.source.generate import Generator
from pipeline.sync.stage import TMP_PREFIX, list_runs
from pipeline.sync.state import load_state
from tests.clickhouse_http import ClickHouseHttp

pytestmark = pytest.mark.warehouses  # chdb, http and server, narrowed per test below

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
    "campaigns": q("SELECT count() FROM current_campaign")[0][0],
    "runs": [list(r) for r in q("SELECT run_id, any(status) FROM sync_runs FINAL GROUP BY run_id ORDER BY run_id")],
}))
"""


@dataclass(frozen=True)
class Kill:
    at: str
    """ADPIPE_TEST_KILL_AT for the killed sync."""
    mode: str
    published: bool
    """Whether the killed run got as far as publishing: then the next sync loads and commits it (`recovered`);
    otherwise it discards what was staged and records the run `interrupted`."""


EMBEDDED_KILLS = [
    Kill("staging-started", "incremental", published=False),
    Kill("part-written:3", "incremental", published=False),
    Kill("part-loaded:3", "full", published=False),  # a full run loads its shadow while it stages
    Kill("published", "incremental", published=True),
    Kill("loaded", "incremental", published=True),
]
"""Kills whose recovery takes no other warehouse path in server mode than the ones below: embedded only."""

LOAD_KILLS = [
    Kill("part-loaded:3", "incremental", published=True),  # a mid-load crash: 3 parts in, the rest not
    Kill("swap:2", "full", published=True),  # the live database holds new and old tables at once
]
"""Kills in the middle of a load: on the embedded engine and through the server code path (the HTTP double)."""


def _ids(kills: list[Kill]) -> list[str]:
    return [f"{kill.at}/{kill.mode}" for kill in kills]


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "ADPIPE_TEST_KILL_AT": ""}
    if settings.clickhouse_is_embedded:
        env["ADPIPE_CLICKHOUSE_URL"] = f"chdb://{tmp_path / 'killed-clickhouse'}"
    return env


def adpipe(env: dict[str, str], *args: str, kill_at: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env={**env, "ADPIPE_TEST_KILL_AT": kill_at},
        capture_output=True,
        text=True,
    )


def read_warehouse(env: dict[str, str]) -> dict:
    counted = subprocess.run([sys.executable, "-c", COUNT_SCRIPT], env=env, check=True, capture_output=True, text=True)
    return json.loads(counted.stdout)


def per_campaign(pg: psycopg.Connection, table: str) -> dict[str, int]:
    rows = pg.execute(f"SELECT campaign_id, count(*) FROM {table} GROUP BY campaign_id").fetchall()
    return {str(campaign): count for campaign, count in rows}


@pytest.mark.warehouses("chdb")
@pytest.mark.parametrize("kill", EMBEDDED_KILLS, ids=_ids(EMBEDDED_KILLS))
def test_a_sync_killed_while_staging_converges_on_the_next(
    kill: Kill, settings: Settings, pg: psycopg.Connection, env: dict[str, str]
) -> None:
    kill_then_recover(kill, settings, pg, env, double=None)


@pytest.mark.parametrize("kill", LOAD_KILLS, ids=_ids(LOAD_KILLS))
def test_a_sync_killed_while_loading_converges_on_the_next(
    kill: Kill, warehouse: str, settings: Settings, pg: psycopg.Connection, env: dict[str, str], request
) -> None:
    double = request.getfixturevalue("clickhouse_http") if warehouse.startswith("http") else None
    kill_then_recover(kill, settings, pg, env, double)


def kill_then_recover(
    kill: Kill, settings: Settings, pg: psycopg.Connection, env: dict[str, str], double: ClickHouseHttp | None
) -> None:
    """Sync, add rows, sync killed at `kill`, sync again: the warehouse holds exactly the source."""
    generator = Generator(pg, seed=21)
    generator.batch(advertisers=2, campaigns=2, impressions=1500, ctr=0.1)  # 6,000 impressions, 600 clicks
    baseline = adpipe(env, "sync", "--mode", "full", "--chunk-rows", "1000")
    assert baseline.returncode == 0, baseline.stderr
    baseline_state = load_state(settings.home)
    generator.batch(advertisers=1, campaigns=2, impressions=1500, ctr=0.2)  # 3,000 more, 600 clicks

    killed = adpipe(env, "sync", "--mode", kill.mode, "--chunk-rows", "1000", kill_at=kill.at)
    assert killed.returncode == -signal.SIGKILL, f"the sync never reached {kill.at}: {killed.stderr}"
    assert load_state(settings.home) == baseline_state  # nothing committed
    staged = [run.run_id for run in list_runs(settings.staging_dir)]
    assert len(staged) == (2 if kill.published else 1)  # published: the killed run is listed beside the baseline
    leftovers = [path for path in settings.staging_dir.iterdir() if path.name.startswith(TMP_PREFIX)]
    assert len(leftovers) == (1 if kill.at.startswith("part-") and not kill.published else 0)

    if double is not None:
        double.requests.clear()
    recovery = adpipe(env, "sync", "--json", "--chunk-rows", "1000")
    assert recovery.returncode == 0, recovery.stderr
    result = json.loads(recovery.stdout)
    recovered, interrupted = result["recovered_runs"], result["interrupted_runs"]
    (killed_run,) = recovered + interrupted
    assert killed_run.endswith(f"-{kill.mode}")
    assert (killed_run in recovered) == (killed_run in staged) == kill.published
    assert not any(path.name.startswith(TMP_PREFIX) for path in settings.staging_dir.iterdir())

    counts = read_warehouse(env)
    impressions, clicks = per_campaign(pg, "impressions"), per_campaign(pg, "clicks")
    assert sum(impressions.values()) == 9_000 and sum(clicks.values()) == 1_200
    assert counts["impressions"] == impressions
    assert counts["daily_impressions"] == impressions
    assert counts["clicks"] == clicks
    assert counts["daily_clicks"] == clicks
    assert counts["campaigns"] == 6
    statuses = dict(counts["runs"])
    assert statuses.pop(killed_run) == ("recovered" if kill.published else "interrupted")
    assert sorted(statuses.values()) == ["success", "success"]  # the baseline and the recovering sync

    if double is not None and kill.at == "part-loaded:3":
        _assert_resent_parts_were_dropped(double, settings, killed_run)


def _assert_resent_parts_were_dropped(double: ClickHouseHttp, settings: Settings, killed_run: str) -> None:
    """The recovering sync re-sent every part of the killed run, the 3 loaded before the kill included.

    The counts above are exact, so the ClickHouse deduplication tokens dropped those 3 repeats: without
    them, the warehouse would hold those parts' rows twice.
    """
    (run,) = [run for run in list_runs(settings.staging_dir) if run.run_id == killed_run]
    parts = sum(len(run.parts(table)) for table in run.manifest["tables"])
    inserts = double.statements(r"^INSERT INTO `?(advertiser|campaign|impressions|clicks|quarantine)`? ")
    assert parts >= 3 and len(inserts) == parts


EVENTS_LOAD = """
import sys
from pathlib import Path
from pipeline.config import load_settings
from pipeline.referral.load import LoadMode, load_files
from pipeline.warehouse import client as clickhouse
settings = load_settings()
load_files(settings, [Path(sys.argv[1])], LoadMode(sys.argv[2]), 300, block_bytes=300)
print(clickhouse.connect(settings).command("SELECT count() FROM referral_events"))
"""
"""`adpipe events load` as a library call, with small chunks: the hand-built file is read in several."""


@pytest.mark.warehouses("chdb")  # the kill is in the load's own steps, whatever the transport to ClickHouse
@pytest.mark.parametrize(
    ("kill_at", "mode"),
    [("events-chunk:2", "stream"), ("events-postgres-written", "batch"), ("events-postgres-written", "stream")],
)
def test_an_events_load_killed_mid_way_converges_on_the_next(
    kill_at: str, mode: str, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    """Killed mid-file or between its Postgres and ClickHouse steps, a load run again gives the hand-worked reports."""
    from tests.test_events_load import EXPECTED, LINES, reports, write

    path = write(tmp_path / "events.jsonl", LINES)
    load = [sys.executable, "-c", EVENTS_LOAD, str(path), mode]
    killed = subprocess.run(load, env={**env, "ADPIPE_TEST_KILL_AT": kill_at}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, f"the load never reached {kill_at}: {killed.stderr}"
    assert reports(settings) == ([] if kill_at == "events-chunk:2" else EXPECTED)
    again = subprocess.run(load, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert int(again.stdout) == 13  # the file's 13 valid events, none twice
    assert reports(settings) == EXPECTED
