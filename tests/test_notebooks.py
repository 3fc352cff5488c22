"""The notebooks run top to bottom in a real Jupyter kernel against a synced warehouse, and show the numbers
worked out by hand below; the committed notebooks carry no outputs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import nbformat
import psycopg
import pytest
from nbclient import NotebookClient

from pipeline.config import Settings
from pipeline.options import Mode
from pipeline.referral.load import load_files
from pipeline.source.generate import Generator
from pipeline.sync.run import SyncOptions, sync
from pipeline.warehouse import client as clickhouse

NOTEBOOK_DIR = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
PLOTLY = "application/vnd.plotly.v1+json"

PL, CL = "ReferralPageLoad", "ReferralRecommendClick"
REFERRAL_EVENTS = [
    # Customer 1, 10:00–11:00: page loads by users 1 and 2; user 1 clicks its own page load's event id.
    ("e1", 1, 1, "2022-01-05T10:00:00", PL),
    ("e2", 1, 2, "2022-01-05T10:05:00", PL),
    ("e1", 1, 1, "2022-01-05T10:06:00", CL),
    # Customer 1, 11:00: a click with no page load before it.
    ("x3", 1, 3, "2022-01-05T11:30:00", CL),
    # Customer 2, 11:00: one page load, clicked 60 s later under another event id (within the 300 s window).
    ("e4", 2, 5, "2022-01-05T11:00:00", PL),
    ("x5", 2, 5, "2022-01-05T11:01:00", CL),
    # Not a known event type: quarantined, in no report.
    ("x6", 2, 5, "2022-01-05T11:02:00", "EMPTY_VALUE"),
]
# customer_id, hour, page_loads, related_clicks, ctr
REFERRAL_CTR = [
    [1, "2022-01-05 10:00:00", 2, 1, 0.5],
    [1, "2022-01-05 11:00:00", 0, 0, None],
    [2, "2022-01-05 11:00:00", 1, 1, 1.0],
]


def wilson(clicks: int, impressions: int) -> tuple[float, float]:
    """The Wilson score 95% interval, written out from its textbook formula."""
    p, n, z = clicks / impressions, impressions, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - margin, centre + margin


def test_wilson_reference_values() -> None:
    # The reference itself, against values worked out by hand: 20 of 200 → [0.06567, 0.14941].
    low, high = wilson(20, 200)
    assert (round(low, 5), round(high, 5)) == (0.06567, 0.14941)


@pytest.fixture
def synced(settings: Settings, pg: psycopg.Connection, tmp_path: Path) -> Settings:
    """Two runs: a full sync of 4 campaigns × 200 impressions, 20 clicks each (impression ids 1–800); then an
    incremental one of impression 801 without a campaign (quarantined) and 50 more impressions of campaign 4
    (ids 802–851, no clicks). Plus the referral events above, loaded."""
    Generator(pg, seed=3).batch(advertisers=2, campaigns=2, impressions=200, ctr=0.1)
    sync(settings, SyncOptions(mode=Mode.FULL))
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (NULL, now())")
    Generator(pg, seed=4).impressions(campaign_id=4, count=50)
    sync(settings, SyncOptions(mode=Mode.INCREMENTAL))
    events = tmp_path / "events.jsonl"
    events.write_text(
        "".join(
            json.dumps({"event_id": e, "customer_id": c, "user_id": u, "fired_at": t, "event_type": kind}) + "\n"
            for e, c, u, t, kind in REFERRAL_EVENTS
        )
    )
    load_files(settings, [events])
    # The kernel is another process, and the embedded ClickHouse serves one at a time.
    clickhouse.close_all()
    return settings


def execute(notebook: Path, probe: str) -> tuple[nbformat.NotebookNode, dict]:
    """Run the notebook in a fresh kernel started in notebooks/, as Jupyter does, then `probe`, a cell printing
    JSON from the notebook's namespace. The kernel inherits this process's ADPIPE_* environment."""
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
    printed = "".join(output["text"] for output in nb.cells[-1].outputs if output.get("name") == "stdout")
    return nb, json.loads(printed)


def figures(nb: nbformat.NotebookNode) -> dict[str, dict]:
    """The plotly figures the notebook displayed, by the `pipeline.analytics.charts` function of the cell that drew
    it."""
    shown = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if PLOTLY in output.get("data", {}):
                (function,) = re.findall(r"(\w+_chart)\(", cell.source)
                shown[function] = output["data"][PLOTLY]
    return shown


def test_explore_kpis(synced: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # The figure as JSON, not also the 4 MB of plotly.js the classic-notebook renderer embeds.
    monkeypatch.setenv("PLOTLY_RENDERER", "plotly_mimetype")
    nb, values = execute(
        NOTEBOOK_DIR / "01_explore_kpis.ipynb",
        """import json
print(json.dumps({
    "ranking": ranking.select("campaign_id", "impressions", "clicks", "wilson_low", "wilson_high").rows(),
    "daily": [daily["impressions"].sum(), daily["clicks"].sum()],
    "advertisers": advertiser_ctr.select("advertiser_id", "impressions", "clicks").rows(),
    "pacing_campaigns": pacing["campaign_id"].to_list(),
    "heatmap": [heatmap["impressions"].sum(), heatmap["clicks"].sum()],
    "referral": referral.select("customer_id", "hour", "page_loads", "related_clicks", "ctr").rows(),
    "checks": [check.ok for check in report.checks],
}, default=str))""",
    )
    # Campaigns 1–3: 20 clicks of 200; campaign 4: 20 of 250 (ctr 0.08), so its lower bound ranks it last.
    assert [row[:3] for row in values["ranking"]] == [[1, 200, 20], [2, 200, 20], [3, 200, 20], [4, 250, 20]]
    low, high = values["ranking"][0][3:]
    assert math.isclose(low, wilson(20, 200)[0]) and math.isclose(high, wilson(20, 200)[1])
    assert math.isclose(values["ranking"][3][3], wilson(20, 250)[0])
    assert values["daily"] == [850, 80] == values["heatmap"]
    assert values["advertisers"] == [[1, 400, 40], [2, 450, 40]]  # campaigns 1–2 and 3–4
    assert values["pacing_campaigns"] == [1, 2, 3, 4]
    assert values["referral"] == REFERRAL_CTR
    assert values["checks"] and all(values["checks"])

    charts = figures(nb)
    assert sorted(charts) == [
        "advertiser_ctr_chart",
        "budget_pacing_chart",
        "campaign_ctr_chart",
        "ctr_heatmap_chart",
        "daily_volume_chart",
        "referral_ctr_chart",
    ]
    assert [name for name, figure in charts.items() if "no data" in json.dumps(figure["layout"])] == []
    bars = charts["campaign_ctr_chart"]["data"][0]
    ctr = bars["x"] if bars.get("orientation") == "h" else bars["y"]
    assert sorted(round(value, 6) for value in ctr) == [0.08, 0.1, 0.1, 0.1]
    heatmap = charts["referral_ctr_chart"]["data"][0]
    assert heatmap["y"] == ["customer 1", "customer 2"]
    assert heatmap["z"] == [[0.5, None], [None, 1.0]]  # customer 1 at 11:00 has no page loads: blank


def test_audit_snapshots(synced: Settings) -> None:
    _, values = execute(
        NOTEBOOK_DIR / "02_audit_snapshots.ipynb",
        """import json
print(json.dumps({
    "summaries": summaries.select("mode", "rows", "quarantined", "committed").rows(),
    "problems": len(problems),
    "campaigns": campaigns_per_advertiser.select("advertiser_id", "campaigns").rows(),
    "duckdb_ctr": duckdb_campaign_ctr.select("campaign_id", "impressions", "clicks").rows(),
    "polars": impressions_per_campaign.rows(),
    "diff": diff.frame().filter(table="impressions").row(0),
    "changed": diff.table("impressions").parts_changed,
    "reasons": quarantine.group_by("table_name", "reason").len().rows(),
    "quarantined_ids": quarantine["source_id"].to_list(),
    "referral_reasons": referral_reasons,
}))""",
    )
    # Full: 2 advertisers + 4 campaigns + 800 impressions + 80 clicks; incremental: 50 impressions and 1 quarantined.
    assert values["summaries"] == [["full", 886, 0, True], ["incremental", 50, 1, True]]
    assert values["problems"] == 0
    assert values["campaigns"] == [[1, 2], [2, 2]]
    assert values["duckdb_ctr"] == [[1, 200, 20], [2, 200, 20], [3, 200, 20], [4, 250, 20]]
    assert values["polars"] == [[1, 200, 1, 200], [2, 200, 201, 400], [3, 200, 401, 600], [4, 250, 601, 851]]
    # table, rows a/b/delta, id ranges, parts added/removed/changed/unchanged
    assert values["diff"] == ["impressions", 800, 50, -750, 1, 800, 802, 851, 0, 0, 1, 0]
    assert values["changed"] == ["impressions/part-00000.parquet"]
    assert values["reasons"] == [["impressions", "campaign_id is NULL", 1]]
    assert values["quarantined_ids"] == [801]
    assert values["referral_reasons"] == {"invalid event_type": 1}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(notebook: Path) -> None:
    cells = nbformat.read(notebook, as_version=4).cells
    code = [cell for cell in cells if cell.cell_type == "code"]
    assert code
    assert [(cell.outputs, cell.execution_count) for cell in code] == [([], None)] * len(code)
    assert [cell.id for cell in code if "execution" in cell.metadata] == []  # no run timestamps either


def test_both_notebooks_are_there() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01_explore_kpis.ipynb", "02_audit_snapshots.ipynb"]
