"""`adpipe demo`: the main job end to end on the configured (by default embedded) systems."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.rule import Rule

from pipeline.cli.app import app, console, current_settings
from pipeline.errors import AdpipeError


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Random seed for the generated data.")] = 42,
    yes: Annotated[
        bool, typer.Option("--yes", help="Allow the demo to empty an external Postgres (ADPIPE_POSTGRES_URL).")
    ] = False,
) -> None:
    """Reset, generate, full sync, generate more, incremental sync, the KPI report, then reconcile."""
    from pipeline.analytics.chstats import chstats
    from pipeline.analytics.reconcile import reconcile
    from pipeline.cli.kpi import print_reconcile_report
    from pipeline.cli.sync import print_sync_result
    from pipeline.config import mask_url
    from pipeline.options import Mode
    from pipeline.source.generate import Generator, reset
    from pipeline.source.postgres import connect
    from pipeline.sync.run import SyncOptions, sync

    settings = current_settings()
    if settings.postgres_url and not yes:
        raise AdpipeError(
            f"the demo empties the source tables, and Postgres is external ({mask_url(settings.postgres_url)}); "
            "pass --yes if that is what you want"
        )
    with connect(settings) as conn:
        _step("1. Empty the source tables")
        reset(conn)
        _step("2. Generate 5 advertisers × 3 campaigns × 1,000 impressions, CTR 8%")
        first = Generator(conn, seed=seed).batch(advertisers=5, campaigns=3, impressions=1000, ctr=0.08)
        console.print(f"{first.impressions:,} impressions, {first.clicks:,} clicks")
    _step("3. Full sync: Postgres → Parquet snapshot → ClickHouse")
    print_sync_result(sync(settings, SyncOptions(mode=Mode.FULL)), [])
    with connect(settings) as conn:
        _step("4. Generate another batch: 2 advertisers × 2 campaigns × 500 impressions, CTR 10%")
        second = Generator(conn, seed=seed + 1).batch(advertisers=2, campaigns=2, impressions=500, ctr=0.10)
        console.print(f"{second.impressions:,} impressions, {second.clicks:,} clicks")
    _step("5. Incremental sync: only the new rows")
    print_sync_result(sync(settings, SyncOptions(mode=Mode.INCREMENTAL)), [])
    _step("6. The KPI report (`adpipe chstats`; every KPI: `adpipe kpi list`)")
    console.print(chstats(settings), markup=False, highlight=False, end="")
    _step("7. Reconcile: every KPI again with DuckDB over the snapshots, row counts against Postgres")
    report = reconcile(settings)
    print_reconcile_report(report)
    if not report.ok:
        raise typer.Exit(1)


def _step(title: str) -> None:
    console.print(Rule(title, align="left"))
