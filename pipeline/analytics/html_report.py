"""`adpipe report`: one self-contained HTML file with the KPI charts, data quality, reconciliation and freshness.

The file needs no network: plotly.js is inlined once in the page head, each chart's figure is embedded as
JSON (plotly's encoder writes `<`, `>` and `/` as `\\u` escapes, so data cannot close the script), and a
Content-Security-Policy forbids the page any request. Every value from the data that lands in HTML
goes through `html.escape`. The page is built from `templates/report.template.html` and written atomically.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from string import Template

import plotly.graph_objects as go
import polars as pl
from plotly.io.json import to_json_plotly
from plotly.offline import get_plotlyjs

from pipeline.analytics import charts
from pipeline.analytics.kpi import Filters, compute, warehouse_client
from pipeline.analytics.reconcile import ReconcileReport, reconcile
from pipeline.analytics.status import WarehouseStatus, format_age, warehouse_status
from pipeline.atomic import write_atomic
from pipeline.config import Settings
from pipeline.referral.publish import query_reports
from pipeline.referral.staging import quarantine_reasons as referral_quarantine_reasons
from pipeline.warehouse.quarantine import quarantine_reasons

TEMPLATE = Path(__file__).resolve().parent / "templates" / "report.template.html"

KPI_CHARTS: tuple[tuple[str, str, Callable[[pl.DataFrame], go.Figure]], ...] = (
    ("campaign_ctr", "ctr_ranking", charts.campaign_ctr_chart),
    ("daily_volume", "daily_impressions_clicks", charts.daily_volume_chart),
    ("advertiser_ctr", "advertiser_ctr", charts.advertiser_ctr_chart),
    ("budget_pacing", "budget_pacing", charts.budget_pacing_chart),
    ("ctr_heatmap", "ctr_heatmap", charts.ctr_heatmap_chart),
)
"""(chart id in the page, KPI it reads, figure)."""
REFERRAL_CHART = "referral_ctr"
CHART_CONFIG = {"displaylogo": False, "responsive": True}

Step = Callable[[str], None]
"""Told what the report is doing next (the CLI shows it as a status line)."""


@dataclass(frozen=True)
class ReportData:
    generated_at: datetime
    database: str
    figures: dict[str, go.Figure]
    quarantine: list[tuple[str, str, int]]
    """(source table, reason, rows) in quarantine."""
    referral_quarantine: dict[str, int]
    reconciliation: ReconcileReport
    status: WarehouseStatus


@dataclass(frozen=True)
class ReportSummary:
    bytes: int
    charts: int
    reconcile_ok: bool
    failed_checks: int


def write_report(settings: Settings, out: Path, step: Step | None = None) -> ReportSummary:
    """Collect everything, render it, and write `out` atomically (a reader never sees half a report)."""
    data = collect(settings, step or (lambda _: None))
    page = render(data)
    write_atomic(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    failed = sum(not check.ok for check in data.reconciliation.checks)
    return ReportSummary(len(page.encode()), len(data.figures), data.reconciliation.ok, failed)


def collect(settings: Settings, step: Step) -> ReportData:
    # Fails first, with the command to run, before the first sync (or on a warehouse without the KPI views).
    client = warehouse_client(settings)
    figures = {}
    for chart_id, kpi, figure in KPI_CHARTS:
        step(f"KPI {kpi}")
        figures[chart_id] = figure(compute(settings, kpi, Filters()))
    step("referral reports")
    figures[REFERRAL_CHART] = charts.referral_ctr_chart(query_reports(settings, None, None, None))
    step("quarantine")
    quarantine = quarantine_reasons(client)
    referral_quarantine = referral_quarantine_reasons(settings.staging_dir)
    step("reconciliation")
    reconciliation = reconcile(settings)
    step("sync status")
    status = warehouse_status(settings, client)
    return ReportData(
        datetime.now(UTC),
        settings.clickhouse_database,
        figures,
        quarantine,
        referral_quarantine,
        reconciliation,
        status,
    )


def render(data: ReportData) -> str:
    checks = data.reconciliation.checks
    failed = sum(not check.ok for check in checks)
    status = data.status
    age = status.age_seconds
    values = {
        "generated_at": f"{data.generated_at:%Y-%m-%d %H:%M:%S}",
        "database": data.database,
        "reconcile_class": "pass" if data.reconciliation.ok else "fail",
        "reconcile_status": "PASS" if data.reconciliation.ok else "FAIL",
        "reconcile_summary": f"{len(checks) - failed} of {len(checks)} checks pass",
        "sync_age": "never" if age is None else f"{format_age(age)} ago",
        "sync_run": status.last_run_id or "no successful sync yet",
        "quarantined_source": f"{sum(rows for *_, rows in data.quarantine):,}",
        "quarantined_referral": f"{sum(data.referral_quarantine.values()):,}",
        "sync_sentence": _sync_sentence(status),
    }
    page = {key: html.escape(value) for key, value in values.items()}
    page |= {
        "plotly_js": get_plotlyjs(),
        "charts": "\n".join(f'<div class="chart" id="chart-{chart_id}"></div>' for chart_id in data.figures),
        "chart_scripts": _chart_scripts(data.figures),
        "quarantine_sources": _table(
            "quarantine-sources",
            ["Table", "Reason", "Rows"],
            data.quarantine,
            total=("Total", "", sum(rows for *_, rows in data.quarantine)),
            empty="No source row is in quarantine.",
        ),
        "quarantine_referral": _table(
            "quarantine-referral",
            ["Reason", "Lines"],
            sorted(data.referral_quarantine.items()),
            total=("Total", sum(data.referral_quarantine.values())),
            empty="No referral event line is in quarantine.",
        ),
        "reconciliation": _table(
            "reconciliation",
            ["Check", "Result", "Detail"],
            [(check.name, "pass" if check.ok else "FAIL", check.detail) for check in checks],
        ),
        "freshness": _table(
            "freshness",
            ["Table", "Postgres rows", "ClickHouse rows", "Quarantined", "Behind"],
            [(t.table, t.postgres_rows, t.clickhouse_rows, t.quarantined, t.behind) for t in status.tables],
        ),
    }
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(page)


def _sync_sentence(status: WarehouseStatus) -> str:
    if status.last_run_id is None or status.last_success_at is None:
        return "No successful sync has been committed yet: run `adpipe sync --mode full`."
    age = format_age(status.age_seconds or 0.0)
    return (
        f"Last successful sync: run {status.last_run_id}, finished {status.last_success_at:%Y-%m-%d %H:%M:%S} UTC "
        f"({age} before this report). Each run loads all four tables; per table, what the source holds beyond "
        "the warehouse and its quarantine:"
    )


def _chart_scripts(figures: dict[str, go.Figure]) -> str:
    calls = [
        f'Plotly.newPlot("chart-{chart_id}", {to_json_plotly(figure.to_plotly_json() | {"config": CHART_CONFIG})});'
        for chart_id, figure in figures.items()
    ]
    return "<script>\n" + "\n".join(calls) + "\n</script>"


def _table(
    table_id: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    total: Sequence[object] | None = None,
    empty: str | None = None,
) -> str:
    rows = list(rows)
    if not rows and empty is not None:
        return f'<p class="empty" id="{table_id}">{html.escape(empty)}</p>'
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]
    head = "".join(f"<th{_num(numeric[i])}>{html.escape(h)}</th>" for i, h in enumerate(headers))
    body = "".join(_row(row, numeric) for row in rows)
    foot = f"<tfoot>{_row(total, numeric)}</tfoot>" if total is not None else ""
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>{foot}</table>'


def _row(cells: Sequence[object], numeric: list[bool]) -> str:
    tds = "".join(f"<td{_num(numeric[i])}>{html.escape(_cell(cell))}</td>" for i, cell in enumerate(cells))
    return f"<tr>{tds}</tr>"


def _cell(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _num(numeric: bool) -> str:
    return ' class="num"' if numeric else ""
