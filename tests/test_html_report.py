"""`adpipe report` on a hand-built dataset: the numbers in the HTML, then the page in real headless Chromium.

The dataset (all times UTC), with what the sync must make of it:
- advertisers 1 'Acme', 2 'Globex', 3 '' → quarantined: advertiser name is empty;
- campaigns 1 'Alpha' (Acme), 2 'Beta <script>…' (Globex; the name tests escaping), 3 'Broken' (bid 0.00 →
  quarantined: bid <= 0), 4 'Orphan' (advertiser 3 → quarantined: campaign without advertiser);
- impressions: 200 for Alpha on Monday 2026-01-05 10:00, 150 for Beta on Tuesday 2026-01-06 14:00, 2 in 2099
  (quarantined: created_at in the future), 1 without a campaign (quarantined: campaign_id is NULL);
- clicks: 30 for Alpha (10:00:30 on the 5th), 6 for Beta (14:00:30 on the 6th), 1 without a time
  (quarantined: created_at is NULL).
Referral events: customer 1 has 4 page loads and 2 related clicks at 10:00 and 2 page loads at 11:00, customer 2
one page load and an unrelated click at 10:00 (2022-01-05); three lines are quarantined: bad JSON, invalid
event_type, missing user_id.
"""

from __future__ import annotations

import json
import math
import os
from html.parser import HTMLParser
from pathlib import Path

import psycopg
import pytest

from pipeline.config import Settings
from pipeline.options import Mode
from pipeline.referral.load import load_files
from pipeline.sync.run import SyncOptions, sync
from tests.conftest import run_cli

BETA = "Beta <script>alert(1)</script>"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

QUARANTINE = [
    ["advertiser", "advertiser name is empty", "1"],
    ["campaign", "bid <= 0", "1"],
    ["campaign", "campaign without advertiser", "1"],
    ["clicks", "created_at is NULL", "1"],
    ["impressions", "campaign_id is NULL", "1"],
    ["impressions", "created_at in the future", "2"],
]
REFERRAL_QUARANTINE = [["bad JSON", "1"], ["invalid event_type", "1"], ["missing user_id", "1"]]
FRESHNESS = [
    # table, Postgres rows, ClickHouse rows, quarantined, behind
    ["advertiser", "3", "2", "1", "0"],
    ["campaign", "4", "2", "2", "0"],
    ["impressions", "353", "350", "3", "0"],
    ["clicks", "37", "36", "1", "0"],
]
KPIS = [
    "advertiser_ctr",
    "budget_pacing",
    "campaign_ctr",
    "ctr_heatmap",
    "ctr_ranking",
    "daily_change",
    "daily_impressions_clicks",
    "effective_cpm_cpc",
    "flight_delivery",
]
# Per chart: traces, plotly points (bars and markers) and, for heatmaps, the cells that hold a value.
CHARTS = {
    "campaign_ctr": (1, 2, None),  # Alpha 200 and Beta 150 impressions, both over the ranking's 100
    "daily_volume": (2, 4, None),  # 2 days: 2 bars + 2 markers
    "advertiser_ctr": (1, 2, None),  # Acme, Globex
    "budget_pacing": (3, 6, None),  # spend, projected, budget for Alpha and Beta
    "ctr_heatmap": (1, 0, 2),  # Monday 10:00, Tuesday 14:00
    "referral_ctr": (1, 0, 3),  # customer 1 at 10:00 and 11:00, customer 2 at 10:00
}


def build_source(pg: psycopg.Connection) -> None:
    pg.execute(
        "INSERT INTO advertiser (id, name, updated_at) VALUES (1, 'Acme', now()), (2, 'Globex', now()), (3, '', now())"
    )
    pg.execute(
        "INSERT INTO campaign (id, name, bid, budget, start_date, end_date, advertiser_id, updated_at) VALUES "
        "(1, 'Alpha', 1.00, 100.00, '2026-01-01', '2026-01-10', 1, now()),"
        "(2, %s, 0.50, 20.00, '2026-01-01', '2026-01-10', 2, now()),"
        "(3, 'Broken', 0.00, 10.00, '2026-01-01', '2026-01-10', 1, now()),"
        "(4, 'Orphan', 1.00, 10.00, '2026-01-01', '2026-01-10', 3, now())",
        (BETA,),
    )
    impressions = (
        [(1, "2026-01-05 10:00:00")] * 200
        + [(2, "2026-01-06 14:00:00")] * 150
        + [(1, "2099-01-01 00:00:00")] * 2
        + [(None, "2026-01-05 10:00:00")]
    )
    clicks = [(1, "2026-01-05 10:00:30")] * 30 + [(2, "2026-01-06 14:00:30")] * 6 + [(1, None)]
    for table, rows in (("impressions", impressions), ("clicks", clicks)):
        with pg.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} (campaign_id, created_at) VALUES (%s, %s)", rows)


def event(event_id: str, customer: int, user: int | None, fired_at: str, event_type: str) -> str:
    return json.dumps(
        {"event_id": event_id, "customer_id": customer, "user_id": user, "fired_at": fired_at, "event_type": event_type}
    )


def write_events(path: Path) -> Path:
    load, click = "ReferralPageLoad", "ReferralRecommendClick"
    lines = [
        event("a1", 1, 1, "01/05/2022, 10:00:00", load),
        event("a2", 1, 2, "01/05/2022, 10:01:00", load),
        event("a3", 1, 3, "01/05/2022, 10:02:00", load),
        event("a4", 1, 4, "01/05/2022, 10:03:00", load),
        event("a1", 1, 1, "01/05/2022, 10:20:00", click),  # related: the page load's event_id
        event("c2", 1, 2, "01/05/2022, 10:02:00", click),  # related: 60 s after user 2's page load
        event("a5", 1, 5, "01/05/2022, 11:10:00", load),
        event("a6", 1, 6, "01/05/2022, 11:20:00", load),
        event("b1", 2, 7, "01/05/2022, 10:30:00", load),
        event("c8", 2, 8, "01/05/2022, 10:31:00", click),  # user 8 loaded no page: not related
        "{not json",
        event("z1", 1, 9, "01/05/2022, 10:40:00", "EMPTY_VALUE"),
        event("z2", 1, None, "01/05/2022, 10:41:00", load),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def report_settings(settings: Settings, pg: psycopg.Connection, tmp_path: Path) -> Settings:
    build_source(pg)
    sync(settings, SyncOptions(mode=Mode.FULL))
    load_files(settings, [write_events(tmp_path / "events.jsonl")])
    return settings


class _Tables(HTMLParser):
    """Cell texts of every <table id=…> (rows of thead, tbody and tfoot in order) and texts of elements by id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.texts: dict[str, str] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._ids: list[tuple[str, str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ident = dict(attrs).get("id")
        if tag == "table" and ident:
            self._table = ident
            self.tables[ident] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        if ident:
            self._ids.append((ident, tag, []))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        if self._ids and self._ids[-1][1] == tag:
            ident, _, parts = self._ids.pop()
            self.texts[ident] = " ".join("".join(parts).split())

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for _, _, parts in self._ids:
            parts.append(data)


def parse(page: str) -> _Tables:
    parser = _Tables()
    parser.feed(page)
    return parser


def wilson(clicks: int, impressions: int) -> tuple[float, float]:
    """The Wilson score 95% interval, from its textbook formula."""
    p, n, z = clicks / impressions, impressions, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - margin, centre + margin


def test_report_numbers_equal_the_hand_computed_ones(report_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    result = run_cli("report", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert "6 charts; reconciliation: all checks pass" in result.stdout
    page = out.read_text()
    html = parse(page)

    assert html.tables["quarantine-sources"] == [["Table", "Reason", "Rows"], *QUARANTINE, ["Total", "", "7"]]
    assert html.tables["quarantine-referral"] == [["Reason", "Lines"], *REFERRAL_QUARANTINE, ["Total", "3"]]
    assert html.texts["quarantined-source-total"] == "7"
    assert html.texts["quarantined-referral-total"] == "3"
    assert html.tables["freshness"][1:] == FRESHNESS
    assert html.texts["reconcile-status"] == "PASS"
    assert [row[:2] for row in html.tables["reconciliation"][1:]] == [
        *([f"kpi {name}", "pass"] for name in KPIS),
        *([f"rows {table}", "pass"] for table in ("advertiser", "campaign", "impressions", "clicks")),
    ]
    assert html.tables["reconciliation"][-1][2] == (
        "Postgres 37 = ClickHouse 36 + quarantined 1 = snapshots 36 + quarantined 1"
    )
    # Data reaches HTML escaped ("bid <= 0" above was parsed back from "bid &lt;= 0"); the campaign name only
    # inside chart JSON, where plotly's encoder escapes "<" and "/".
    assert "<script>alert" not in page and "bid &lt;= 0" in page
    # The file stands alone: plotly.js once, and no URL a browser would fetch.
    assert page.count("<script>") == 2  # plotly.js in the head, the six charts at the end
    assert 'src="http' not in page and "<link" not in page

    # A path that cannot be written: one line, exit 1, the earlier report untouched, no temp file left.
    failed = run_cli("report", "--out", str(out.parent))
    assert (failed.exit_code, failed.stderr.strip()) == (1, f"error: cannot write {out.parent}: Is a directory")
    assert out.read_text() == page and list(tmp_path.glob(".out.*")) == []


def test_report_shows_a_failed_reconciliation(
    report_settings: Settings, pg: psycopg.Connection, tmp_path: Path
) -> None:
    # Facts deleted in Postgres stay in the warehouse until a full sync: reconcile's row count catches it.
    pg.execute("DELETE FROM impressions WHERE id BETWEEN 11 AND 20")
    out = tmp_path / "report.html"
    result = run_cli("report", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert "1 checks FAIL" in result.stdout
    html = parse(out.read_text())
    assert html.texts["reconcile-status"] == "FAIL"
    failed = [row for row in html.tables["reconciliation"][1:] if row[1] != "pass"]
    assert failed == [
        [
            "rows impressions",
            "FAIL",
            "Postgres 343 ≠ ClickHouse 350 + quarantined 3 ≠ snapshots 350 + quarantined 3",
        ]
    ]
    assert html.tables["freshness"][3] == ["impressions", "343", "350", "3", "-10"]


def test_report_before_the_first_sync_says_what_to_do(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = run_cli("report", "--out", str(out))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the warehouse")
    assert "run `adpipe sync --mode full`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.glob(".report.html.*")) == []


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("ADPIPE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"ADPIPE_REQUIRE_BROWSER=1 but {CHROMIUM} is missing: install it (apt-get install chromium)")
    pytest.skip(f"headless Chromium is not installed at {CHROMIUM} (ADPIPE_REQUIRE_BROWSER=1 makes this a failure)")


def test_report_renders_offline_in_chromium(report_settings: Settings, tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    out = tmp_path / "report.html"
    assert run_cli("report", "--out", str(out)).exit_code == 0
    url = out.as_uri()
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))

        def route(route) -> None:
            requests.append(route.request.url)
            route.continue_() if route.request.url == url else route.abort()

        context.route("**/*", route)
        page.goto(url, wait_until="load")
        page.wait_for_function("document.querySelectorAll('.chart .main-svg').length >= 6", timeout=30_000)
        rendered = page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('.chart')].map(div => {
                const box = div.querySelector('.main-svg').getBoundingClientRect();
                const cells = div._fullData.filter(t => t.type === 'heatmap')
                    .flatMap(t => t.z.flat()).filter(v => v !== null && v !== undefined).length;
                return [div.id.replace('chart-', ''), {
                    width: box.width, height: box.height, traces: div._fullData.length,
                    points: div.querySelectorAll('.point').length, cells: cells || null,
                    heatmapImages: div.querySelectorAll('.hm image').length,
                    noData: [...div.querySelectorAll('.annotation-text')].some(a => a.textContent === 'no data'),
                }];
            }))"""
        )
        ranking = page.evaluate(
            """() => {
                const div = document.getElementById('chart-campaign_ctr'), trace = div._fullData[0];
                const top = element => element.getBoundingClientRect().top;
                const ticks = [...div.querySelectorAll('.ytick text')].sort((a, b) => top(a) - top(b));
                return {labels: ticks.map(tick => tick.textContent), ctr: trace.x,
                        plus: trace.error_x.array, minus: trace.error_x.arrayminus};
            }"""
        )
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()

    assert problems == []
    assert requests == [url]
    assert set(rendered) == set(CHARTS)
    for chart, (traces, points, cells) in CHARTS.items():
        seen = rendered[chart]
        assert seen["width"] > 0 and seen["height"] > 0, chart
        assert (seen["traces"], seen["points"], seen["cells"]) == (traces, points, cells), chart
        assert seen["heatmapImages"] == (1 if cells else 0), chart
        assert not seen["noData"], chart
    # Rank 1 on top; the campaign name shown as written, not run or read as markup; error bars are the Wilson bounds.
    assert ranking["labels"] == ["Alpha (#1)", f"{BETA} (#2)"]
    assert ranking["ctr"] == pytest.approx([30 / 200, 6 / 150])
    for (clicks, impressions), ctr, plus, minus in zip(
        [(30, 200), (6, 150)], ranking["ctr"], ranking["plus"], ranking["minus"], strict=True
    ):
        low, high = wilson(clicks, impressions)
        assert (ctr - minus, ctr + plus) == pytest.approx((low, high), rel=1e-9)
    assert (tmp_path / "report.png").stat().st_size > 50_000
