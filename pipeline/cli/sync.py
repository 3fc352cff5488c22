"""Commands that move data into the warehouse: `init`, `sync`, `status`, `replay`, `snapshots`, `capture`."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.cli.app import app, console, current_settings, err_console, progress_bars
from pipeline.errors import AdpipeError, ConfigError, describe_failure
from pipeline.options import DEFAULT_CHUNK_ROWS, Engine, Mode, OnReset

if TYPE_CHECKING:
    from pipeline.analytics.metrics import FollowerMetrics
    from pipeline.analytics.status import CaptureStatus, WarehouseStatus
    from pipeline.config import Settings
    from pipeline.sync.follow import Tick
    from pipeline.sync.run import SyncOptions
    from pipeline.sync.runlog import SyncResult

log = logging.getLogger(__name__)

snapshots_app = typer.Typer(help="Inspect, verify and prune the staged Parquet runs.", no_args_is_help=True)
app.add_typer(snapshots_app, name="snapshots")
capture_app = typer.Typer(help="The replication slot that carries fact updates and deletes.", no_args_is_help=True)
app.add_typer(capture_app, name="capture")


@app.command()
def init(
    cluster: Annotated[
        str | None, typer.Option(help="Create the schema ON CLUSTER: replicated local tables + Distributed.")
    ] = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="With --cluster: write the DDL to stdout, execute nothing.")
    ] = False,
) -> None:
    """Create the ClickHouse database, tables and materialized views, and the source's publication and replication
    slot for change capture (idempotent)."""

    settings = current_settings()
    if cluster is None:
        if print_only:
            raise AdpipeError("--print shows the DDL for a cluster: add --cluster NAME")
        _init_single_node(settings)
    else:
        _init_cluster(settings, cluster, print_only)
        if print_only:
            return
    _init_capture(settings)


def _init_capture(settings: Settings) -> None:
    """Change capture where the source allows it; where it does not, one line says what to grant or set."""
    from pipeline.sync.capture import start_capture

    if not settings.change_capture:
        console.print("Change capture is off (ADPIPE_CHANGE_CAPTURE).")
        return
    try:
        slot, created = start_capture(settings)
    except AdpipeError as exc:
        warning = f"warning: {exc}; syncs fall back to counting facts"
        err_console.print(f"[yellow]{escape(warning)}[/]", soft_wrap=True, highlight=False)
        return
    console.print(f"Change capture: replication slot [bold]{slot}[/] {'created' if created else 'is in place'}.")


def _init_single_node(settings: Settings) -> None:
    from pipeline.warehouse import client as clickhouse
    from pipeline.warehouse.schema import apply_schema

    apply_schema(clickhouse.connect(settings))
    console.print(f"Warehouse schema is in place in database [bold]{escape(settings.clickhouse_database)}[/].")


def _init_cluster(settings: Settings, cluster: str, print_only: bool) -> None:
    from pipeline.warehouse.cluster import create_on_cluster, render_cluster_schema

    if print_only:
        statements = render_cluster_schema(cluster, settings.clickhouse_database)
        typer.echo("".join(f"{statement};\n\n" for statement in statements), nl=False)
        return
    create_on_cluster(settings, cluster)
    database = settings.clickhouse_database
    console.print(
        f"Warehouse schema is in place on cluster [bold]{escape(cluster)}[/] in database [bold]{escape(database)}[/]."
    )


@app.command()
def sync(
    mode: Annotated[
        Mode, typer.Option(help="full: reload everything and swap it in; incremental: only changes.")
    ] = Mode.INCREMENTAL,
    engine: Annotated[Engine, typer.Option(help="Postgres reader.")] = Engine.ADBC,
    chunk_rows: Annotated[int, typer.Option(help="Rows read per chunk (bounds memory).")] = DEFAULT_CHUNK_ROWS,
    partitions: Annotated[int, typer.Option(help="Parallel reads per chunk.")] = 2,
    on_reset: Annotated[
        OnReset, typer.Option(help="When the source was reset: stop, or run a full sync.")
    ] = OnReset.STOP,
    keep: Annotated[int | None, typer.Option(help="After success, prune staged runs to the newest N.")] = None,
    repair: Annotated[
        bool,
        typer.Option(help="Compare every synced fact with the source by id bucket; reload the buckets that differ."),
    ] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Reconcile the KPIs with DuckDB after loading.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep syncing, every --interval, until SIGINT or SIGTERM.")
    ] = False,
    interval: Annotated[str, typer.Option(help="With --follow: time between runs, e.g. 500ms, 5s, 1m.")] = "5s",
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="With --follow: serve Prometheus metrics on this port (/metrics)."),
    ] = None,
    metrics_address: Annotated[str, typer.Option(help="With --metrics-port: the address to listen on.")] = "127.0.0.1",
) -> None:
    """Copy Postgres into ClickHouse through a staged Parquet snapshot, exactly once."""
    from pipeline.sync.run import SyncOptions
    from pipeline.sync.run import sync as run_sync

    settings = current_settings()
    if follow:
        if verify:
            raise ConfigError("--verify runs once, after one sync: run `adpipe reconcile` beside the follower instead")
        options = SyncOptions(mode, engine, chunk_rows, partitions, on_reset, keep=keep, repair=repair)
        _follow(settings, options, _interval(interval), metrics_port, metrics_address, as_json)
        return
    if metrics_port is not None:
        raise ConfigError("--metrics-port serves the metrics of a follower: add --follow")
    with progress_bars() as progress:
        tasks: dict[str, int] = {}

        def advance(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = progress.add_task(what, total=total)
            progress.update(tasks[what], completed=done, total=total)

        options = SyncOptions(
            mode, engine, chunk_rows, partitions, on_reset, keep=keep, repair=repair, progress=advance
        )
        result = run_sync(settings, options)
    if as_json:
        console.print_json(json.dumps(result.to_json()))
    else:
        print_sync_result(result)
    if verify:
        _verify(settings)


def _interval(text: str) -> float:
    from pipeline.options import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--interval: {exc}") from None
    if seconds <= 0:
        raise ConfigError(f"--interval must be more than 0, got {text}")
    return seconds


def _follow(
    settings: Settings, options: SyncOptions, interval: float, port: int | None, address: str, as_json: bool
) -> None:
    """Sync until a signal; one line per run. With `port`, gather `status` figures after each run and serve them."""
    from pipeline.sync.follow import follow

    gc.enable()  # off for one-shot commands (`pipeline.cli.main`); a follower's cycles must not pile up for days
    metrics = _serve_metrics(port, address, as_json) if port is not None else None
    started = False

    def report(tick: Tick) -> None:
        nonlocal started
        if not (started or as_json):  # after the first run: a follower that cannot start says only why
            console.print(f"Following the source every {interval:g} s; Ctrl-C or SIGTERM stops after the current run.")
        started = True
        if as_json:
            typer.echo(json.dumps(_tick_json(tick)))
        elif tick.result is not None:
            console.print(_tick_line(tick), highlight=False)
        if tick.error is not None:
            err_console.print(
                f"[yellow]run failed ({tick.failures} in a row): {escape(str(tick.error))};"
                f" retrying in {tick.retry_in:g} s[/]",
                highlight=False,
                soft_wrap=True,
            )
        if metrics is not None:
            metrics.update(succeeded=tick.result is not None, status=_gather_status(settings, tick))

    stop = threading.Event()
    with _stop_on_signals(stop):
        follow(settings, options, interval, stop, report)
    (err_console if as_json else console).print("Stopped after the current run.")  # stdout stays JSON lines


def _serve_metrics(port: int, address: str, as_json: bool) -> FollowerMetrics:
    from pipeline.analytics.metrics import FollowerMetrics, serve_metrics

    metrics = FollowerMetrics()
    served = serve_metrics(metrics, port, address)
    # With --json, stdout holds the runs' JSON lines alone.
    host = f"[{address}]" if ":" in address else address  # an IPv6 address, bracketed as URLs need
    (err_console if as_json else console).print(f"Metrics at http://{escape(host)}:{served}/metrics")
    return metrics


def _gather_status(settings: Settings, tick: Tick) -> WarehouseStatus | None:
    """The `status` figures right after a successful run (the engine is still open then); None if they fail."""
    from pipeline.analytics.status import warehouse_status
    from pipeline.warehouse import client as clickhouse

    if tick.result is None:
        return None
    try:
        return warehouse_status(settings, clickhouse.connect(settings))
    except Exception as exc:
        log.warning("metrics not refreshed: %s", describe_failure(exc) or repr(exc))
        return None


def _tick_line(tick: Tick) -> str:
    result = tick.result
    assert result is not None
    changed = [f"{name} +{t.loaded:,}" for name, t in result.tables.items() if t.loaded or t.quarantined]
    changed += [f"{name} -{t.retracted:,}" for name, t in result.tables.items() if t.retracted]
    return f"{result.run_id}: {', '.join(changed) or 'no changes'} ({tick.seconds:.2f} s)"


def _tick_json(tick: Tick) -> dict[str, object]:
    run = tick.result.to_json() if tick.result is not None else None
    return {"run": run, "seconds": round(tick.seconds, 3), "error": tick.error, "retry_in": tick.retry_in}


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop`; a second one interrupts at once (exit 130)."""

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        # Not through rich or logging: their locks may be held by the code this signal interrupted.
        os.write(2, f"{signal.Signals(signum).name}: stopping after the current run (again to interrupt)\n".encode())

    previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler_before in previous.items():
            signal.signal(number, handler_before)


def _verify(settings: Settings) -> None:
    from pipeline.analytics.reconcile import reconcile
    from pipeline.cli.kpi import print_reconcile_report

    report = reconcile(settings)
    print_reconcile_report(report)
    if not report.ok:
        raise typer.Exit(1)


def print_sync_result(result: SyncResult) -> None:
    for run_id in result.recovered:
        console.print(f"[yellow]Loaded run {run_id}, which an interrupted sync had staged.[/]")
    for run_id in result.interrupted:
        console.print(f"[yellow]Run {run_id} was killed before it recorded its end: marked interrupted.[/]")
    table = Table(title=f"{result.mode} sync {result.run_id}")
    for column in ("Table", "Extracted", "Loaded", "Quarantined", "Ids"):
        table.add_column(column, justify="left" if column == "Table" else "right", no_wrap=True)
    for name, t in result.tables.items():
        ids = f"{t.min_id}-{t.max_id}" if t.min_id is not None else "-"
        table.add_row(name, f"{t.extracted:,}", f"{t.loaded:,}", f"{t.quarantined:,}", ids)
    console.print(table)
    console.print(f"Done in {result.timings.get('total', 0):.2f} s.")
    if result.pruned:
        console.print(f"Pruned {len(result.pruned)} old staged runs.")


@app.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the figures as one JSON document (docs/operations.md).")
    ] = False,
) -> None:
    """Per table: Postgres vs ClickHouse rows and max id, rows behind, quarantined, and the last successful run."""
    from pipeline.analytics.status import format_age, status_document, warehouse_status

    report = warehouse_status(current_settings())
    if as_json:
        console.print_json(json.dumps(status_document(report)))
        return
    table = Table(title="Postgres → ClickHouse")
    for column in (
        "Table",
        "PG rows",
        "PG max id",
        "CH rows",
        "CH max id",
        "Behind",
        "Quarantined",
    ):
        table.add_column(column, justify="left" if column == "Table" else "right", no_wrap=True)
    for t in report.tables:
        table.add_row(
            t.table,
            f"{t.postgres_rows:,}",
            _text(t.postgres_max_id),
            f"{t.clickhouse_rows:,}",
            _text(t.clickhouse_max_id),
            f"{t.behind:,}",
            f"{t.quarantined:,}",
        )
    console.print(table)
    if report.last_run_id is None:
        console.print("No successful sync yet: run `adpipe sync --mode full`.")
        return
    age = report.age_seconds
    console.print(
        f"Last successful run: {report.last_run_id}" + (f", {format_age(age)} ago." if age is not None else ".")
    )
    _print_capture(report.capture)


def _print_capture(capture: CaptureStatus) -> None:
    if capture.slot is None:
        console.print("Change capture is off: fact updates are not seen, deleted facts are found by counts.")
    elif not capture.present or capture.wal_status == "lost":
        err_console.print(
            f"[red]Replication slot {capture.slot} is {'gone' if not capture.present else 'lost'}:"
            " run `adpipe sync --mode full`.[/]"
        )
    else:
        retained = f"{capture.retained_bytes / 2**20:,.1f} MiB of WAL retained"
        line = f"Change capture: replication slot {capture.slot}, {retained} ({capture.wal_status})."
        warning = f"[yellow]{line} Above ADPIPE_CAPTURE_LAG_WARNING_BYTES: is the sync running?[/]"
        console.print(warning if capture.lagging else line)


def _text(value: object) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


@app.command()
def replay() -> None:
    """Rebuild ClickHouse from the staged runs alone (latest full run, then the later ones), without Postgres."""
    from pipeline.sync.run import replay as run_replay

    with progress_bars() as progress:
        task = progress.add_task("replay", total=None)
        replayed = run_replay(
            current_settings(), lambda _w, done, total: progress.update(task, completed=done, total=total)
        )
    console.print(f"Replayed {len(replayed)} runs: {replayed[0]} … {replayed[-1]}.")


@snapshots_app.command("list")
def snapshots_list() -> None:
    """The staged runs, oldest first, with their row counts and whether they are committed."""
    from pipeline.analytics.audit import run_summaries

    settings = current_settings()
    table = Table(title=f"Staged runs in {escape(str(settings.staging_dir))}")
    # The run id ends in the mode (…-full, …-incremental), so it needs no column of its own.
    for column in ("Run", "Rows", "Quarantined", "Parts", "Committed"):
        table.add_column(column, justify="left" if column == "Run" else "right", no_wrap=True)
    for run in run_summaries(settings):
        committed = "yes" if run.committed else "no"
        table.add_row(run.run_id, f"{run.rows:,}", f"{run.quarantined:,}", str(run.parts), committed)
    console.print(table)


@snapshots_app.command("verify")
def snapshots_verify() -> None:
    """Re-hash every staged part against its manifest; exit 1 on any mismatch."""
    from pipeline.sync.stage import verify_staging

    verification = verify_staging(current_settings().staging_dir)
    for p in verification.problems:
        err_console.print(f"[red]{escape(f'{p.run_id}/{p.path}: {p.problem}')}[/]")
    if verification.problems:
        raise typer.Exit(1)
    console.print(f"All {verification.parts} parts of {verification.runs} runs match their checksums.")


@snapshots_app.command("prune")
def snapshots_prune(keep: Annotated[int, typer.Option(help="Staged runs to keep.")] = 10) -> None:
    """Delete old staged runs, never those the warehouse state or the next sync needs."""
    from pipeline.sync.run import prune

    removed = prune(current_settings(), keep)
    console.print(f"Removed {len(removed)} staged runs." if removed else "Nothing to prune.")


@capture_app.command("drop")
def capture_drop() -> None:
    """Drop this warehouse's replication slot, so a retired pipeline holds no WAL (a full sync starts it again)."""
    from pipeline.sync.run import drop_capture

    slot = drop_capture(current_settings())
    console.print(f"Dropped replication slot {slot}." if slot else "No replication slot to drop.")
