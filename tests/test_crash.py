"""SIGKILL a real `adpipe sync` process at each named kill point; the next sync must converge to exactly the source.

`ADPIPE_TEST_KILL_AT` (pipeline/killpoints.py) makes the sync kill itself at a point of its own code, so every
test lands where it says, on any machine. A killed process exits by SIGKILL only if it reached its point.

With the embedded engine, the adpipe processes use their own chDB data directory (chDB allows one process
per directory, and this test process holds the session's), and the syncs before and after the kill and the counts
run in children too. On the HTTP double they share the test's warehouse, so those run in this process: only the
killed sync needs to be a process of its own.
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
from pipeline.options import Mode
from pipeline.source.generate import Generator
from pipeline.sync.stage import TMP_PREFIX, list_runs
from pipeline.sync.state import load_state
from tests.clickhouse_http import ClickHouseHttp

pytestmark = pytest.mark.warehouses  # chdb, http and server, narrowed per test below


def sync_then_count() -> dict:
    """An incremental sync (which first settles what a killed one left), then the warehouse's counts."""
    from pipeline.config import load_settings
    from pipeline.sync.run import SyncOptions, sync
    from pipeline.warehouse import client as clickhouse

    settings = load_settings()
    result = sync(settings, SyncOptions(chunk_rows=1000))
    client = clickhouse.connect(settings)

    def q(sql: str) -> list:
        return client.query(sql).result_rows

    return {
        "result": result.to_json(),
        "impressions": dict(q("SELECT toString(campaign_id), count() FROM impressions GROUP BY campaign_id")),
        "clicks": dict(q("SELECT toString(campaign_id), count() FROM clicks GROUP BY campaign_id")),
        "daily_impressions": dict(q("SELECT toString(campaign_id), sum(impressions) FROM campaign_daily GROUP BY 1")),
        "daily_clicks": dict(q("SELECT toString(campaign_id), sum(clicks) FROM campaign_daily GROUP BY 1")),
        "campaigns": q("SELECT count() FROM current_campaign")[0][0],
        "runs": [list(r) for r in q("SELECT run_id, any(status) FROM sync_runs FINAL GROUP BY run_id ORDER BY run_id")],
        "loaded": dict(q("SELECT run_id, sum(rows_loaded) FROM sync_runs FINAL GROUP BY run_id")),
    }


@dataclass(frozen=True)
class Kill:
    at: str
    """ADPIPE_TEST_KILL_AT for the killed sync."""
    mode: str
    published: bool
    """Whether the killed run got as far as publishing: then the next sync loads and commits it (`recovered`);
    otherwise it discards what was staged and records the run `interrupted`."""
    committed: bool = False
    """Killed after its own commit: nothing is left to do but record it `success`."""


KILLS = [
    Kill("staging-started", "incremental", published=False),
    Kill("part-written:3", "incremental", published=False),
    Kill("part-loaded:3", "full", published=False),  # a full run loads its shadow while it stages
    Kill("published", "incremental", published=True),
    Kill("part-loaded:3", "incremental", published=True),  # a mid-load crash: 3 parts in, the rest not
    Kill("loaded", "incremental", published=True),
    Kill("swap:2", "full", published=True),  # the live database holds new and old tables at once
    Kill("committed", "incremental", published=True, committed=True),
]


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


REPOSITORY = Path(__file__).resolve().parents[1]


def recover_and_count(env: dict[str, str], in_process: bool) -> dict:
    """`sync_then_count`: in this process when it can reach the warehouse (the HTTP double), else in a child."""
    if in_process:
        return sync_then_count()
    script = "import json; from tests.test_crash import sync_then_count; print(json.dumps(sync_then_count()))"
    child_env = {**env, "PYTHONPATH": str(REPOSITORY)}
    done = subprocess.run([sys.executable, "-c", script], env=child_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def full_sync(env: dict[str, str], in_process: bool) -> None:
    if in_process:
        from pipeline.config import load_settings
        from pipeline.sync.run import SyncOptions, sync

        sync(load_settings(), SyncOptions(mode=Mode.FULL, chunk_rows=1000))
        return
    done = adpipe(env, "sync", "--mode", "full", "--chunk-rows", "1000")
    assert done.returncode == 0, done.stderr


def per_campaign(pg: psycopg.Connection, table: str) -> dict[str, int]:
    rows = pg.execute(f"SELECT campaign_id, count(*) FROM {table} GROUP BY campaign_id").fetchall()
    return {str(campaign): count for campaign, count in rows}


@pytest.mark.parametrize("kill", KILLS, ids=_ids(KILLS))
def test_a_sync_killed_at_a_named_point_converges_on_the_next(
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
    full_sync(env, in_process=double is not None)
    baseline_state = load_state(settings.home)
    generator.batch(advertisers=1, campaigns=2, impressions=1500, ctr=0.2)  # 3,000 more, 600 clicks

    killed = adpipe(env, "sync", "--mode", kill.mode, "--chunk-rows", "1000", kill_at=kill.at)
    assert killed.returncode == -signal.SIGKILL, f"the sync never reached {kill.at}: {killed.stderr}"
    assert (load_state(settings.home) == baseline_state) != kill.committed
    committed_by_killed = load_state(settings.home).last_run_id
    staged = [run.run_id for run in list_runs(settings.staging_dir)]
    assert len(staged) == (2 if kill.published else 1)  # published: the killed run is listed beside the baseline
    leftovers = [path for path in settings.staging_dir.iterdir() if path.name.startswith(TMP_PREFIX)]
    assert len(leftovers) == (1 if kill.at.startswith("part-") and not kill.published else 0)

    if double is not None:
        double.requests.clear()
    counts = recover_and_count(env, in_process=double is not None)
    recovered, interrupted = counts["result"]["recovered_runs"], counts["result"]["interrupted_runs"]
    if kill.committed:
        assert recovered == interrupted == []
        killed_run = committed_by_killed
        # Recorded by the next sync with what it loaded, as it would have recorded itself (the rows_synced counter)
        (run,) = [run for run in list_runs(settings.staging_dir) if run.run_id == killed_run]
        assert counts["loaded"][killed_run] == sum(table["loaded"] for table in run.manifest["summary"].values()) > 0
    else:
        (killed_run,) = recovered + interrupted
        assert (killed_run in recovered) == (killed_run in staged) == kill.published
    assert killed_run.endswith(f"-{kill.mode}")
    assert not any(path.name.startswith(TMP_PREFIX) for path in settings.staging_dir.iterdir())
    impressions, clicks = per_campaign(pg, "impressions"), per_campaign(pg, "clicks")
    assert sum(impressions.values()) == 9_000 and sum(clicks.values()) == 1_200
    assert_exact(counts, impressions, clicks)
    assert counts["campaigns"] == 6
    statuses = dict(counts["runs"])
    ended = "success" if kill.committed else "recovered" if kill.published else "interrupted"
    assert statuses.pop(killed_run) == ended
    assert sorted(statuses.values()) == ["success", "success"]  # the baseline and the recovering sync

    if double is not None and kill.at == "part-loaded:3" and kill.published:
        _assert_resent_parts_were_dropped(double, settings, killed_run)


def assert_exact(counts: dict, impressions: dict[str, int], clicks: dict[str, int]) -> None:
    """Per campaign, the base tables and the aggregates the materialized views fill hold the source's counts."""
    assert counts["impressions"] == impressions
    assert counts["daily_impressions"] == impressions
    assert counts["clicks"] == clicks
    assert counts["daily_clicks"] == {campaign: clicks.get(campaign, 0) for campaign in impressions}


def _assert_resent_parts_were_dropped(double: ClickHouseHttp, settings: Settings, killed_run: str) -> None:
    """The recovering sync re-sent every part of the killed run, the 3 loaded before the kill included.

    The counts above are exact, so the ClickHouse deduplication tokens dropped those 3 repeats: without
    them, the warehouse would hold those parts' rows twice.
    """
    (run,) = [run for run in list_runs(settings.staging_dir) if run.run_id == killed_run]
    parts = sum(len(run.parts(table)) for table in run.manifest["tables"])
    inserts = double.statements(r"^INSERT INTO `?(advertiser|campaign|impressions|clicks|quarantine)`? ")
    assert parts >= 3 and len(inserts) == parts


def test_kills_at_random_moments_are_each_accounted_for(
    warehouse: str, settings: Settings, pg: psycopg.Connection, env: dict[str, str]
) -> None:
    """Kills after fixed delays land wherever this machine's speed puts them (the named points above prove each
    place). Wherever one lands, the next sync must account for it exactly: a run it published is recovered, a run
    it was staging is interrupted, and a sync that finished before its kill leaves nothing to either."""
    generator = Generator(pg, seed=21)
    generator.batch(advertisers=2, campaigns=3, impressions=5_000, ctr=0.1)
    expected = {"success": 0, "recovered": 0, "interrupted": 0}
    for delay, mode in ((1.0, "full"), (2.0, "incremental")):
        if mode == "incremental":
            generator.batch(advertisers=1, campaigns=3, impressions=5_000, ctr=0.1)
        committed_before = {run.run_id for run in list_runs(settings.staging_dir)}
        last_before = load_state(settings.home).last_run_id
        killed = sync_killed_after(delay, mode, env)
        # It committed its own run: it finished, or was killed after its commit (then recorded `success` below).
        finished = load_state(settings.home).last_run_id != last_before
        published = [run.run_id for run in list_runs(settings.staging_dir) if run.run_id not in committed_before]
        uncommitted = [run_id for run_id in published if run_id != load_state(settings.home).last_run_id]
        staging = [p.name.removeprefix(TMP_PREFIX) for p in settings.staging_dir.glob(f"{TMP_PREFIX}*")]
        counts = recover_and_count(env, in_process=warehouse.startswith("http"))
        recovered, interrupted = counts["result"]["recovered_runs"], counts["result"]["interrupted_runs"]
        assert recovered == uncommitted
        assert set(staging) <= set(interrupted) and len(interrupted) <= 1 and not set(interrupted) & set(published)
        assert all(run_id.endswith(f"-{mode}") for run_id in recovered + interrupted)
        if killed.returncode == 0:  # it finished before its kill came
            assert recovered == interrupted == []
        expected["success"] += 1 + finished  # the recovering sync, and the killed one if it committed
        expected["recovered"] += len(recovered)
        expected["interrupted"] += len(interrupted)
    assert_exact(counts, per_campaign(pg, "impressions"), per_campaign(pg, "clicks"))
    statuses = [status for _, status in counts["runs"]]
    assert {status: statuses.count(status) for status in expected} == expected
    assert len(statuses) == sum(expected.values())  # and no run is left `running`


def sync_killed_after(seconds: float, mode: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sync", "--mode", mode, "--chunk-rows", "5000"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode)


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


@pytest.mark.parametrize(
    ("kill_at", "mode"),
    [("events-chunk:2", "stream"), ("events-postgres-written", "batch"), ("events-postgres-written", "stream")],
)
def test_an_events_load_killed_mid_way_converges_on_the_next(
    kill_at: str, mode: str, warehouse: str, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    """Killed mid-file or between its Postgres and ClickHouse steps, a load run again gives the hand-worked reports."""
    from tests.test_events_load import EXPECTED, LINES, reports, write

    path = write(tmp_path / "events.jsonl", LINES)
    load = [sys.executable, "-c", EVENTS_LOAD, str(path), mode]
    killed = subprocess.run(load, env={**env, "ADPIPE_TEST_KILL_AT": kill_at}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, f"the load never reached {kill_at}: {killed.stderr}"
    assert reports(settings) == ([] if kill_at == "events-chunk:2" else EXPECTED)
    if warehouse.startswith("http"):  # the double serves this process too: load again here
        from pipeline.referral.load import LoadMode, load_files
        from pipeline.warehouse import client as clickhouse

        load_files(settings, [path], LoadMode(mode), 300, block_bytes=300)
        events = clickhouse.connect(settings).command("SELECT count() FROM referral_events")
    else:
        again = subprocess.run(load, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        events = int(again.stdout)
    assert events == 13  # the file's 13 valid events, none twice
    assert reports(settings) == EXPECTED
