"""The run log: what each sync did, one `sync_runs` row per table and run (newest `updated_at` wins)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl
from clickhouse_connect.driver.client import Client

from pipeline.catalog import DIMENSIONS, FACTS
from pipeline.errors import first_line
from pipeline.sync.stage import Run

log = logging.getLogger(__name__)

INTERRUPTED = "the sync process ended before recording how the run ended (killed, or the machine stopped)"


@dataclass
class TableSummary:
    extracted: int = 0
    loaded: int = 0
    quarantined: int = 0
    retracted: int = 0
    """Old versions of facts updated or deleted in the source, taken out of the warehouse (change capture)."""
    min_id: int | None = None
    max_id: int | None = None


@dataclass
class SyncResult:
    run_id: str
    mode: str
    tables: dict[str, TableSummary] = field(default_factory=dict)
    recovered: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)
    """Staged runs deleted after this one succeeded (`--keep`)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "recovered_runs": self.recovered,
            "interrupted_runs": self.interrupted,
            "tables": {name: t.__dict__ for name, t in self.tables.items()},
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "pruned_runs": self.pruned,
        }


_SYNC_RUNS_SCHEMA = pl.Schema(
    {
        "run_id": pl.String,
        "table_name": pl.String,
        "mode": pl.String,
        "rows_extracted": pl.UInt64,
        "rows_loaded": pl.UInt64,
        "rows_quarantined": pl.UInt64,
        "min_id": pl.Int64,
        "max_id": pl.Int64,
        "started_at": pl.Datetime("us", "UTC"),
        "finished_at": pl.Datetime("us", "UTC"),
        "status": pl.String,
        "error": pl.String,
        "updated_at": pl.Datetime("us", "UTC"),
    }
)


def record(
    client: Client,
    result: SyncResult,
    started: datetime,
    status: str,
    error: str | None = None,
    finished: datetime | None = None,
) -> None:
    """Write this run's rows to sync_runs with `status`, finished now unless `finished` says when; a failure to do
    so is logged, never raised: the run's outcome matters more than its log line (`record_start` is the exception).
    A failing run's own error is its one line (the warehouse that refused this is usually what failed it); a run
    that succeeded says that its row is stale, until the next run records it."""
    try:
        _insert_rows(client, result, started, status, error, finished)
    except Exception as exc:
        level = logging.INFO if status == "failed" else logging.WARNING
        log.log(level, "could not record run %s as %s in sync_runs: %s", result.run_id, status, first_line(exc))
        log.debug("recording run %s failed", result.run_id, exc_info=True)


def record_start(client: Client, result: SyncResult, started: datetime) -> None:
    """Record the run as running, before it loads anything; raises if that fails. The next sync checks that the
    warehouse holds the row of the last run committed (`holds_run`): one committed without it would look like a
    warehouse replaced by an older one."""
    _insert_rows(client, result, started, "running", None, None)


def _insert_rows(
    client: Client, result: SyncResult, started: datetime, status: str, error: str | None, finished: datetime | None
) -> None:
    now = datetime.now(UTC)
    tables = result.tables or {name: TableSummary() for name in (*DIMENSIONS, *FACTS)}
    rows = [
        {
            "run_id": result.run_id,
            "table_name": name,
            "mode": result.mode,
            "rows_extracted": t.extracted,
            "rows_loaded": t.loaded,
            "rows_quarantined": t.quarantined,
            "min_id": t.min_id,
            "max_id": t.max_id,
            "started_at": started,
            "finished_at": None if status in ("running", "interrupted") else finished or now,
            "status": status,
            "error": error,
            "updated_at": now,
        }
        for name, t in tables.items()
    ]
    # Built by Polars: pyarrow imports pandas to build arrays from Python objects (0.25 s of every sync), and
    # clickhouse-connect's row path does too.
    client.insert_arrow("sync_runs", pl.DataFrame(rows, schema=_SYNC_RUNS_SCHEMA).to_arrow())


def holds_run(client: Client, run_id: str) -> bool:
    """Whether the warehouse's sync_runs holds a row of run `run_id`. A run records itself as running before it loads
    anything, so the warehouse a run committed into holds its row, unless it was emptied, replaced, or restored from
    a backup taken before the run."""
    return bool(
        client.command("SELECT count() > 0 FROM sync_runs WHERE run_id = {run:String}", parameters={"run": run_id})
    )


def close_interrupted_runs(
    client: Client,
    recovered: set[str],
    last_committed: str | None,
    committed: Callable[[str], tuple[Run, datetime] | None],
) -> list[str]:
    """Settle the runs whose sync_runs rows still say `running`; returns the ids of those marked `interrupted`.

    Called under the sync lock, after recovery: no other sync of this ADPIPE_HOME runs, so such a run was
    killed before it could record its end. Nothing of it was committed (what it had published was just
    recovered and recorded as such) unless it is `last_committed`: killed between its commit and recording
    it, it is recorded `success`, with its manifest's counts and its commit's time (`committed(run_id)` gives both), not
    this run's. One ADPIPE_HOME per warehouse is assumed, as for the incremental state.
    """
    rows = client.query(
        "SELECT run_id, any(mode), min(started_at) FROM sync_runs FINAL WHERE status = 'running' GROUP BY run_id"
    ).result_rows
    interrupted = sorted(run_id for run_id, _, _ in rows if run_id not in recovered and run_id != last_committed)
    for run_id, mode, started in rows:
        if run_id == last_committed and run_id not in recovered:
            staged = committed(run_id)
            tables = _manifest_summary(staged[0]) if staged else {}
            finished = staged[1] if staged else None
            record(client, SyncResult(run_id, mode, tables), started.replace(tzinfo=UTC), "success", finished=finished)
        elif run_id in interrupted:
            record(client, SyncResult(run_id, mode), started.replace(tzinfo=UTC), "interrupted", error=INTERRUPTED)
    return interrupted


def record_recovered(client: Client, run: Run) -> None:
    """Record a run that this sync loaded and committed for the sync that staged it: status `recovered`."""
    started = datetime.fromisoformat(run.manifest["source"]["taken_at"]).replace(tzinfo=UTC)
    record(client, SyncResult(run.run_id, run.mode, _manifest_summary(run)), started, "recovered")


def _manifest_summary(run: Run) -> dict[str, TableSummary]:
    """The counts of a staged run, as its sync would have recorded them."""
    summary = run.manifest.get("summary")
    if summary is None:  # staged by a version whose manifests lacked the summary: what was loaded, at least
        return {
            name: TableSummary(loaded=t["rows"], min_id=t["min_id"], max_id=t["max_id"])
            for name, t in run.manifest["tables"].items()
            if name in (*DIMENSIONS, *FACTS)
        }
    return {name: TableSummary(**counts) for name, counts in summary.items()}
