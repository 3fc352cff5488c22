"""`adpipe demo`: the main job end to end on the configured (by default embedded) systems."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.rule import Rule

from pipeline.cli.app import app, console, current_settings


@app.command()
def demo(
    seed: Annotated[int, typer.Option(min=0, help="Random seed for the generated data.")] = 42,
    yes: Annotated[
        bool, typer.Option("--yes", help="Allow the demo to empty an external Postgres (ADPIPE_POSTGRES_URL).")
    ] = False,
) -> None:
    """Reset, generate, full sync, generate more, incremental sync, the KPI report, then reconcile."""
    from pipeline.analytics.reconcile import ReconcileReport
    from pipeline.cli.kpi import print_reconcile_report
    from pipeline.cli.sync import print_sync_result
    from pipeline.demo import demo_steps
    from pipeline.source.generate import BatchResult
    from pipeline.sync.runlog import SyncResult

    ok = True
    for step in demo_steps(current_settings(), seed, allow_external=yes):
        console.print(Rule(step.title, align="left"))
        match step.run():
            case BatchResult() as batch:
                console.print(f"{batch.impressions:,} impressions, {batch.clicks:,} clicks")
            case SyncResult() as result:
                print_sync_result(result)
            case str() as report:
                console.print(report, markup=False, highlight=False, end="")
            case ReconcileReport() as report:
                print_reconcile_report(report)
                ok = report.ok
    if not ok:
        raise typer.Exit(1)
