"""KPI commands: `chstats` (the seed's report), `kpi` (any KPI, any format) and `reconcile`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.analytics.kpi import Filters
from pipeline.cli.app import app, console, current_settings, print_frame
from pipeline.output import OutputFormat

if TYPE_CHECKING:
    import polars as pl

    from pipeline.analytics.reconcile import ReconcileReport

DATE_FORMATS = ["%Y-%m-%d"]


def filters_from_options(
    from_: datetime | None,
    to: datetime | None,
    advertiser: int | None,
    campaign: int | None,
    min_impressions: int | None,
) -> Filters:
    return Filters(
        from_date=from_.date() if from_ else None,
        to_date=to.date() if to else None,
        advertiser_id=advertiser,
        campaign_id=campaign,
        min_impressions=min_impressions,
    )


FromOption = Annotated[datetime | None, typer.Option("--from", formats=DATE_FORMATS, help="First UTC day, inclusive.")]
ToOption = Annotated[datetime | None, typer.Option("--to", formats=DATE_FORMATS, help="Last UTC day, inclusive.")]
AdvertiserOption = Annotated[int | None, typer.Option("--advertiser", min=1, help="Only this advertiser id.")]
CampaignOption = Annotated[int | None, typer.Option("--campaign", min=1, help="Only this campaign id.")]


@app.command()
def chstats() -> None:
    """The seed's report: CTR per campaign, per UTC day and per advertiser, from ClickHouse."""
    from pipeline.analytics.chstats import chstats as report

    typer.echo(report(current_settings()), nl=False)


@app.command("kpi")
def kpi_command(
    name: Annotated[str, typer.Argument(help="A KPI name, or `list` to list them.")],
    from_: FromOption = None,
    to: ToOption = None,
    advertiser: AdvertiserOption = None,
    campaign: CampaignOption = None,
    min_impressions: Annotated[
        int | None, typer.Option(min=0, help="ctr_ranking: rank only campaigns with this many impressions (100).")
    ] = None,
    fmt: Annotated[
        OutputFormat | None, typer.Option("--format", help="Output format; default: table, or --out's suffix.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write to this file (atomically) instead of stdout.")] = None,
) -> None:
    """Compute one KPI from ClickHouse: `adpipe kpi list` shows them all."""
    from pipeline.analytics.kpi import compute, list_kpis
    from pipeline.output import output_format

    if name == "list":
        _print_kpi_list(list_kpis())
        return
    filters = filters_from_options(from_, to, advertiser, campaign, min_impressions)
    chosen = output_format(fmt, out)
    frame = compute(current_settings(), name, filters)
    print_frame(frame, chosen, out, lambda f: _rich_table(name, f))


@app.command()
def reconcile(
    from_: FromOption = None, to: ToOption = None, advertiser: AdvertiserOption = None, campaign: CampaignOption = None
) -> None:
    """Recompute every KPI with DuckDB from the Parquet snapshots and count rows in Postgres; exit 1 on a mismatch."""
    from pipeline.analytics.reconcile import reconcile as run

    report = run(current_settings(), filters_from_options(from_, to, advertiser, campaign, None))
    print_reconcile_report(report)
    if not report.ok:
        raise typer.Exit(1)


def print_reconcile_report(report: ReconcileReport) -> None:
    table = Table(title="Reconciliation: ClickHouse vs DuckDB over the snapshots vs Postgres")
    for column in ("Check", "Result", "Detail"):
        table.add_column(column, no_wrap=column != "Detail")
    for check in report.checks:
        table.add_row(check.name, "[green]pass[/]" if check.ok else "[bold red]FAIL[/]", escape(check.detail))
    console.print(table)
    failed = sum(not check.ok for check in report.checks)
    console.print("All checks pass." if not failed else f"[bold red]{failed} of {len(report.checks)} checks failed.[/]")


def _print_kpi_list(kpis: list) -> None:
    table = Table(title="KPIs (kpi_sql/)")
    table.add_column("Name", no_wrap=True)
    table.add_column("What it measures")
    for kpi in kpis:
        table.add_row(kpi.name, kpi.summary)
    console.print(table)


def _rich_table(name: str, frame: pl.DataFrame) -> Table:
    table = Table(title=name)
    for column, dtype in frame.schema.items():
        table.add_column(column, justify="right" if dtype.is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*(_display(column, value) for column, value in zip(frame.columns, row, strict=True)))
    return table


def _display(column: str, value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2%}" if column in {"ctr", "utilization"} or column.startswith("ctr_") else f"{value:,.2f}"
    if isinstance(value, int) and not column.endswith("id"):
        return f"{value:,}"
    return escape(str(value))  # a campaign named `[/]` is text, not markup
