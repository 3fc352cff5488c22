"""Auditing the staged runs from their manifests alone: what each run holds, and what changed between two.

Manifests hold every part's rows and sha256, so no Parquet file is read. A part is identified by its
path inside the run (`<table>/part-NNNNN.parquet`); the writer is deterministic, so the same rows give
the same checksum, and a part that did not change between two runs shows as unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import polars as pl

from pipeline.config import Settings
from pipeline.errors import AdpipeError
from pipeline.sync.stage import Part, Run, list_runs
from pipeline.sync.state import load_state


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    """Ends in the mode: …-full, …-incremental."""
    mode: str
    rows: int
    """Rows staged in the source tables, quarantine entries not included."""
    quarantined: int
    parts: int
    committed: bool
    """The warehouse state includes this run (it was loaded and committed)."""


def run_summaries(settings: Settings) -> list[RunSummary]:
    """Every staged run, oldest first, with its row counts and whether it is committed."""
    last = load_state(settings.home).last_run_id
    summaries = []
    for run in list_runs(settings.staging_dir):
        tables = run.manifest["tables"]
        summaries.append(
            RunSummary(
                run_id=run.run_id,
                mode=run.mode,
                rows=sum(t["rows"] for name, t in tables.items() if name != "quarantine"),
                quarantined=_quarantined(run.manifest),
                parts=sum(len(t["parts"]) for t in tables.values()),
                committed=last is not None and run.run_id <= last,
            )
        )
    return summaries


def _quarantined(manifest: dict) -> int:
    """Rows the run set aside, as its sync reported them. Its quarantine part also holds the entries it resolved
    (rows fixed in the source), which set nothing aside; a manifest without the summary (an earlier adpipe's) has
    only that part to count."""
    if (summary := manifest.get("summary")) is not None:
        return sum(table["quarantined"] for table in summary.values())
    return manifest["tables"].get("quarantine", {}).get("rows", 0)


class PartStatus(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class PartChange:
    """One part path in two runs, with its checksum in each (None: the run has no such part)."""

    path: str
    sha256_a: str | None
    sha256_b: str | None

    @property
    def status(self) -> PartStatus:
        if self.sha256_a is None:
            return PartStatus.ADDED
        if self.sha256_b is None:
            return PartStatus.REMOVED
        return PartStatus.UNCHANGED if self.sha256_a == self.sha256_b else PartStatus.CHANGED


@dataclass(frozen=True)
class TableDiff:
    """One table in two runs; the `_a` fields are None when run a has no such table, `_b` likewise."""

    table: str
    rows_a: int | None
    rows_b: int | None
    min_id_a: int | None
    max_id_a: int | None
    min_id_b: int | None
    max_id_b: int | None
    parts: tuple[PartChange, ...]
    """Every part path in either run, sorted."""

    def paths(self, status: PartStatus) -> tuple[str, ...]:
        return tuple(part.path for part in self.parts if part.status is status)

    @property
    def parts_added(self) -> tuple[str, ...]:
        return self.paths(PartStatus.ADDED)

    @property
    def parts_removed(self) -> tuple[str, ...]:
        return self.paths(PartStatus.REMOVED)

    @property
    def parts_changed(self) -> tuple[str, ...]:
        """Paths in both runs with different checksums."""
        return self.paths(PartStatus.CHANGED)

    @property
    def parts_unchanged(self) -> tuple[str, ...]:
        """Paths in both runs with the same checksum: the same bytes."""
        return self.paths(PartStatus.UNCHANGED)

    @property
    def rows_delta(self) -> int:
        return (self.rows_b or 0) - (self.rows_a or 0)

    @property
    def identical(self) -> bool:
        return all(part.status is PartStatus.UNCHANGED for part in self.parts)


_COUNT_COLUMNS = (
    *("rows_a", "rows_b", "rows_delta", "min_id_a", "max_id_a", "min_id_b", "max_id_b"),
    *("parts_added", "parts_removed", "parts_changed", "parts_unchanged"),
)


@dataclass(frozen=True)
class RunDiff:
    run_a: str
    run_b: str
    tables: tuple[TableDiff, ...]
    """Every table in either run, by name."""

    @property
    def identical(self) -> bool:
        return all(table.identical for table in self.tables)

    def table(self, name: str) -> TableDiff:
        for table in self.tables:
            if table.table == name:
                return table
        raise AdpipeError(f"neither {self.run_a} nor {self.run_b} has a table {name!r}")

    def frame(self) -> pl.DataFrame:
        """One row per table: rows and id ranges in each run, and how many parts were added, removed, changed."""
        return pl.DataFrame(
            [
                {
                    "table": t.table,
                    "rows_a": t.rows_a,
                    "rows_b": t.rows_b,
                    "rows_delta": t.rows_delta,
                    "min_id_a": t.min_id_a,
                    "max_id_a": t.max_id_a,
                    "min_id_b": t.min_id_b,
                    "max_id_b": t.max_id_b,
                    "parts_added": len(t.parts_added),
                    "parts_removed": len(t.parts_removed),
                    "parts_changed": len(t.parts_changed),
                    "parts_unchanged": len(t.parts_unchanged),
                }
                for t in self.tables
            ],
            schema={"table": pl.String} | dict.fromkeys(_COUNT_COLUMNS, pl.Int64),
        )

    def parts_frame(self) -> pl.DataFrame:
        """One row per table and part path: its status and its checksum in each run."""
        return pl.DataFrame(
            [
                {
                    "table": t.table,
                    "path": p.path,
                    "status": str(p.status),
                    "sha256_a": p.sha256_a,
                    "sha256_b": p.sha256_b,
                }
                for t in self.tables
                for p in t.parts
            ],
            schema=dict.fromkeys(("table", "path", "status", "sha256_a", "sha256_b"), pl.String),
        )


def find_run(runs: list[Run], run_id: str) -> Run:
    """The run named `run_id` among `runs`."""
    for run in runs:
        if run.run_id == run_id:
            return run
    raise AdpipeError(f"no staged run {run_id!r}; `adpipe snapshots list` shows the runs")


def diff_runs(a: Run, b: Run) -> RunDiff:
    """What run `b` holds compared with run `a`, table by table."""
    names = sorted(set(a.manifest["tables"]) | set(b.manifest["tables"]))
    return RunDiff(a.run_id, b.run_id, tuple(_diff_table(name, a, b) for name in names))


def _diff_table(name: str, a: Run, b: Run) -> TableDiff:
    entry_a, entry_b = a.manifest["tables"].get(name), b.manifest["tables"].get(name)
    sums_a, sums_b = _checksums(a.parts(name)), _checksums(b.parts(name))
    return TableDiff(
        table=name,
        rows_a=entry_a["rows"] if entry_a else None,
        rows_b=entry_b["rows"] if entry_b else None,
        min_id_a=entry_a["min_id"] if entry_a else None,
        max_id_a=entry_a["max_id"] if entry_a else None,
        min_id_b=entry_b["min_id"] if entry_b else None,
        max_id_b=entry_b["max_id"] if entry_b else None,
        parts=tuple(
            PartChange(path, sums_a.get(path), sums_b.get(path)) for path in sorted(sums_a.keys() | sums_b.keys())
        ),
    )


def _checksums(parts: list[Part]) -> dict[str, str]:
    return {part.path: part.sha256 for part in parts}
