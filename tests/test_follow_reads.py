"""Reads from other processes while `adpipe sync --follow` runs: the HTML report and a notebook's kernel.

The follower lends the embedded engine (pipeline.warehouse.client.lend_engine): each reader waits for it, the
follower hands it over between runs, and takes it back after the reader let go. Counts are the hand-built seed's
(tests.test_sync.seed_hand_built: campaign 1 'Spring' 3 impressions and 2 clicks, campaign 2 'Summer' 1
impression, campaign 3 'Autumn' none) plus the rows each test inserts itself.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from pipeline.config import Settings
from tests import test_follow
from tests.harness import wait_until
from tests.test_follow import Follower, adpipe, following, runs_seen
from tests.test_html_report import parse
from tests.test_notebooks import NOTEBOOK_DIR, execute
from tests.test_sync import seed_hand_built

IMPRESSIONS = ("adpipe_warehouse_rows", (("table", "impressions"),))
FAILED_RUNS = ("adpipe_follow_runs_total", (("result", "failed"),))
CONSECUTIVE_FAILURES = ("adpipe_follow_consecutive_failures", ())

env = test_follow.env  # the fixture: an engine of the test's own, which the follower and the readers share


def synced_impressions(follower: Follower, count: int) -> dict:
    """The follower's metrics once its warehouse holds `count` impressions."""

    def synced() -> dict | None:
        samples = follower.metrics()
        return samples if samples.get(IMPRESSIONS) == count else None

    return wait_until(synced, 60, f"{count} impressions in the follower's metrics")


def test_report_beside_a_follower(
    settings: Settings, pg: psycopg.Connection, env: dict[str, str], tmp_path: Path
) -> None:
    seed_hand_built(pg)
    with following(env, tmp_path, "--interval", "300ms", metrics=True) as follower:
        runs_seen(follower, 1)
        out = tmp_path / "report.html"
        done = adpipe(env, "report", "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Wrote ") and "6 charts; reconciliation: all checks pass" in done.stdout
        page = out.read_text()
        html = parse(page)
        # table, Postgres rows, ClickHouse rows, quarantined, behind
        assert html.tables["freshness"][1:] == [
            ["advertiser", "2", "2", "0", "0"],
            ["campaign", "3", "3", "0", "0"],
            ["impressions", "4", "4", "0", "0"],
            ["clicks", "2", "2", "0", "0"],
        ]
        assert html.texts["reconcile-status"] == "PASS"
        # Names reach the page in the charts' JSON: the budget pacing's campaigns, the advertisers' CTR.
        for label in ("Spring (#1)", "Summer (#2)", "Autumn (#3)", "Acme (#1)", "Globex (#2)"):
            assert label in page, label

        # The follower took the engine back and goes on syncing.
        pg.execute("INSERT INTO impressions (campaign_id, created_at) SELECT 3, now() FROM generate_series(1, 2)")
        assert synced_impressions(follower, 6)[FAILED_RUNS] == 0
        code, stderr = follower.stop()
    assert code == 0, stderr
    assert follower.lines()[-1] == "Stopped after the current run."


@pytest.mark.parametrize(
    "engine_wait",
    [
        pytest.param("60", id="the-follower-waits-for-the-kernel"),
        pytest.param("0.2", id="the-follower-gives-up-and-retries"),
    ],
)
def test_notebook_beside_a_follower(
    engine_wait: str,
    settings: Settings,
    pg: psycopg.Connection,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel keeps the engine from its first query to `close_all()` in the last cell (a couple of seconds
    here). A follower that waits longer than that (the default, 60 s) just waits; one that waits 0.2 s fails its
    runs as busy meanwhile, reports them and retries with backoff. Either way it syncs again once the kernel let go,
    and SIGTERM ends it with 0."""
    seed_hand_built(pg)
    follower_env = {**env, "ADPIPE_ENGINE_WAIT_SECONDS": engine_wait}
    with following(follower_env, tmp_path, "--interval", "300ms", metrics=True) as follower:
        runs_seen(follower, 1)
        # The kernel inherits this process's environment: the follower's engine (waiting the default 60 s for it),
        # and plotly's JSON renderer.
        monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", env["ADPIPE_CLICKHOUSE_URL"])
        monkeypatch.delenv("ADPIPE_ENGINE_WAIT_SECONDS", raising=False)
        monkeypatch.setenv("PLOTLY_RENDERER", "plotly_mimetype")
        _, values = execute(
            NOTEBOOK_DIR / "01_explore_kpis.ipynb",
            """import json
print(json.dumps({
    "ranking": ranking.height,
    "daily": [daily["impressions"].sum(), daily["clicks"].sum()],
    "advertisers": advertiser_ctr.select("advertiser_id", "impressions", "clicks").rows(),
    "pacing_campaigns": pacing["campaign_id"].to_list(),
    "checks": [check.ok for check in report.checks],
}, default=str))""",
        )
        assert values["ranking"] == 0  # no campaign has the 100 impressions the ranking needs
        assert values["daily"] == [4, 2]
        assert values["advertisers"] == [[1, 4, 2], [2, 0, 0]]  # Acme: campaigns 1 and 2; Globex: campaign 3
        assert values["pacing_campaigns"] == [1, 2, 3]
        assert values["checks"] and all(values["checks"])
        assert follower.process.poll() is None

        # The kernel closed the engine in its last cell: the follower takes it back and syncs what came since.
        pg.execute("INSERT INTO impressions (campaign_id, created_at) SELECT 3, now() FROM generate_series(1, 5)")
        samples = synced_impressions(follower, 9)
        assert samples[CONSECUTIVE_FAILURES] == 0
        code, stderr = follower.stop()
    assert code == 0, stderr
    assert follower.lines()[-1] == "Stopped after the current run."
    if engine_wait == "60":
        assert samples[FAILED_RUNS] == 0
        assert "run failed" not in stderr
    else:
        assert samples[FAILED_RUNS] >= 1
        assert "run failed (1 in a row): embedded ClickHouse at" in stderr
        assert "is busy" in stderr and "after waiting 0.2 s; retrying in 1 s" in stderr
