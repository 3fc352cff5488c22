"""`adpipe report`: the self-contained HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pipeline.cli.app import app, console, current_settings, err_console


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="The HTML file to write (atomically).")] = Path("report.html"),
) -> None:
    """One HTML file, viewable offline: KPI and referral charts, quarantine, reconciliation, sync freshness."""
    from pipeline.analytics.html_report import write_report

    with err_console.status("report") as status:
        summary = write_report(current_settings(), out, lambda what: status.update(f"report: {what}"))
    result = "all checks pass" if summary.reconcile_ok else f"[bold red]{summary.failed_checks} checks FAIL[/]"
    size = f"{summary.bytes / 2**20:.1f} MiB, {summary.charts} charts"
    console.print(f"Wrote {escape(str(out))} ({size}; reconciliation: {result}).")
