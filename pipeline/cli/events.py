"""`adpipe events …`: referral event logs → hourly referral reports (generate, load, report)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.cli.app import app, console, current_settings, print_frame, progress_bars
from pipeline.options import LoadMode
from pipeline.output import OutputFormat

if TYPE_CHECKING:
    import polars as pl

    from pipeline.referral.load import LoadSummary

events_app = typer.Typer(help="Referral event logs → hourly referral reports in Postgres.", no_args_is_help=True)
app.add_typer(events_app, name="events")


@events_app.command()
def generate(
    out: Annotated[Path, typer.Option(help="The JSON-lines file to write.")],
    events: Annotated[int, typer.Option(help="Lines to write.")] = 10_000,
    customers: Annotated[int, typer.Option(help="Customers (referral pages).")] = 20,
    users: Annotated[int, typer.Option(help="Distinct users.")] = 1_000,
    seed: Annotated[int | None, typer.Option(min=0, help="Random seed: the same seed writes the same file.")] = None,
) -> None:
    """Write a realistic, time-ordered event file with a controlled share of every defect."""
    from pipeline.referral.generate import generate_file

    written = generate_file(out, events, customers, users, seed)
    defects = f"{written.defects:,} with a defect, by design"
    console.print(f"Wrote {written.lines:,} lines to {escape(str(out))} ({defects}).")


@events_app.command()
def load(
    files: Annotated[list[Path], typer.Argument(help="JSON-lines event files.", show_default=False)],
    mode: Annotated[
        LoadMode, typer.Option(help="batch: each file in memory; stream: bounded chunks.")
    ] = LoadMode.BATCH,
    window: Annotated[int, typer.Option(help="Seconds before a click in which a page load makes it related.")] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Clean the files, stage the events, recompute the hourly reports they touch, mirror to ClickHouse."""
    from pipeline.referral.load import load_files

    with progress_bars() as progress:
        tasks: dict[str, int] = {}

        def advance(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = progress.add_task(what, total=total)
            progress.update(tasks[what], completed=done, total=total)

        summary = load_files(current_settings(), files, mode, window, advance)
    if as_json:
        console.print_json(json.dumps(summary.to_json()))
    else:
        _print_summary(summary)


def _print_summary(summary: LoadSummary) -> None:
    table = Table(title=f"events load ({summary.mode}, window {summary.window_seconds} s)")
    table.add_column("", no_wrap=True)
    table.add_column("count", justify="right")
    rows = [
        ("lines read", summary.lines),
        ("valid events", summary.valid),
        ("newly staged", summary.staged),
        ("duplicates dropped", summary.duplicates),
        *((f"quarantined: {reason}", n) for reason, n in sorted(summary.quarantined.items())),
        ("report hours replaced", summary.hours),
        ("events in ClickHouse (touched days)", summary.clickhouse_rows),
    ]
    for label, count in rows:
        table.add_row(label, f"{count:,}")
    console.print(table)
    console.print(f"Done in {summary.seconds:.2f} s ({summary.events_per_second:,.0f} lines/s).")


@events_app.command()
def report(
    customer: Annotated[int | None, typer.Option(help="Only this customer.")] = None,
    start: Annotated[
        datetime | None, typer.Option("--from", help="First hour (UTC), inclusive.", show_default=False)
    ] = None,
    end: Annotated[datetime | None, typer.Option("--to", help="End (UTC), exclusive.", show_default=False)] = None,
    fmt: Annotated[
        OutputFormat | None, typer.Option("--format", help="Output format; default: table, or --out's suffix.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write to this file (atomically) instead of stdout.")] = None,
) -> None:
    """The hourly referral reports: page loads, clicks, unique clicking users, related clicks and CTR."""
    from pipeline.output import output_format
    from pipeline.referral.publish import query_reports

    chosen = output_format(fmt, out)
    print_frame(query_reports(current_settings(), customer, start, end), chosen, out, _report_table)


def _report_table(frame: pl.DataFrame) -> Table:
    table = Table(title="Referral reports (UTC hours)", caption="No report rows match." if frame.is_empty() else None)
    for label in ("customer", "hour", "loads", "clicks", "users", "related", "ctr"):
        table.add_column(label, justify="left" if label == "hour" else "right", no_wrap=True)
    for customer_id, hour, *counts, ctr in frame.iter_rows():
        cells = [str(customer_id), f"{hour:%Y-%m-%d %H:%M}", *map(str, counts), "" if ctr is None else f"{ctr:.4f}"]
        table.add_row(*cells)
    return table
