"""Reconciliation: every KPI recomputed by DuckDB from the Parquet snapshots, row counts from Postgres.

DuckDB reads the staged files directly — an independent engine over the audit trail — through
views named like the warehouse tables, so each KPI's DuckDB SQL reads like its ClickHouse twin.
Local files are read with DuckDB's own `read_parquet`. Staging on S3 is read through pyarrow datasets
over the same S3 filesystem the sync writes with: DuckDB's S3 support (the httpfs extension) is
downloaded on first use, which a machine without internet access cannot do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from clickhouse_connect.driver.client import Client

from pipeline.analytics.kpi import Filters, check_filtered_ids, list_kpis, run_clickhouse, run_duckdb, warehouse_client
from pipeline.catalog import DIMENSIONS, FACTS, RETRACTED, SOURCE_COLUMNS, SOURCE_TABLES, live_rows
from pipeline.config import Settings
from pipeline.errors import AdpipeError
from pipeline.source.postgres import connect as connect_postgres
from pipeline.sqlfiles import sql_text, statements
from pipeline.storage import LocalStore, Store, open_store
from pipeline.sync.stage import current_state_files
from pipeline.sync.state import load_state

RELATIVE_TOLERANCE = 1e-9
"""Floating-point KPIs (ratios) may differ in the last bits between engines; counts must be equal."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class ReconcileReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def snapshot_connection(settings: Settings) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with views over the committed snapshot files, named like the warehouse tables."""
    files = current_state_files(settings)
    if not files.get("advertiser") and not files.get("impressions"):
        if load_state(settings.home).last_run_id is None:
            raise AdpipeError(f"no committed snapshot in {settings.staging_dir}: run `adpipe sync` first")
        raise AdpipeError(
            f"the staged runs in {settings.staging_dir} do not reach back to the full run the warehouse builds on"
            " (deleted, or another staging directory): run `adpipe sync --mode full` to stage a complete snapshot"
        )
    store = open_store(settings.staging_dir)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for table in SOURCE_TABLES:
        paths = [str(p) for p in files.get(table, [])]
        if paths:
            source = _parquet_source(con, store, table, paths, union_by_name=table in DIMENSIONS)
            con.execute(f"CREATE VIEW staged_{table} AS SELECT * FROM {source}")
        elif table in FACTS:
            # A fact table that was empty at the full run (and has had no row since) stages no file.
            con.execute(f"CREATE VIEW staged_{table} AS {_EMPTY_FACTS}")
        else:
            raise AdpipeError(f"the committed snapshot has no {table} files; run `adpipe sync --mode full`")
    for fact, retracted in RETRACTED.items():
        # Only runs that saw a fact change have retractions: none at all is an empty relation of the fact's shape.
        paths = [str(p) for p in files.get(retracted, [])]
        source = _parquet_source(con, store, retracted, paths, union_by_name=False) if paths else None
        columns = ", ".join(SOURCE_COLUMNS[fact])
        select = f"SELECT {columns} FROM {source}" if source else f"SELECT {columns} FROM staged_{fact} WHERE false"
        con.execute(f"CREATE VIEW staged_{retracted} AS {select}")
    for statement in statements(sql_text("schemas", "duckdb", "snapshot_views.sql")):
        con.execute(statement)
    return con


_EMPTY_FACTS = "SELECT NULL::UBIGINT AS id, NULL::UINTEGER AS campaign_id, NULL::TIMESTAMPTZ AS created_at WHERE false"
"""No fact rows, in the types `clean_facts` stages them with."""


def _parquet_source(
    con: duckdb.DuckDBPyConnection, store: Store, table: str, paths: list[str], union_by_name: bool
) -> str:
    """A DuckDB table expression over the files: `read_parquet` locally, a registered pyarrow dataset on S3.

    The dataset's schema is the union of the files' schemas (a column missing from a file reads as
    NULL), which is what `union_by_name` does.
    """
    if isinstance(store, LocalStore):
        return f"read_parquet({paths}, union_by_name = true)" if union_by_name else f"read_parquet({paths})"
    schema = pa.unify_schemas([pq.read_schema(p, filesystem=store.fs) for p in paths]) if union_by_name else None
    name = f"_{table}_files"
    con.register(name, ds.dataset(paths, schema=schema, format="parquet", filesystem=store.fs))
    return name


def reconcile(settings: Settings, filters: Filters | None = None) -> ReconcileReport:
    """Every KPI in ClickHouse vs DuckDB; row counts in Postgres vs ClickHouse vs the snapshots."""
    filters = filters or Filters()
    client = warehouse_client(settings)
    check_filtered_ids(client, filters)  # else every check passes, over nothing
    snapshots = snapshot_connection(settings)
    report = ReconcileReport()
    for kpi in list_kpis():
        warehouse = run_clickhouse(client, kpi, filters)
        recomputed = run_duckdb(snapshots, kpi, filters)
        report.checks.append(Check(f"kpi {kpi.name}", *_compare(warehouse, recomputed)))
    report.checks.extend(_row_counts(settings, client, snapshots))
    return report


def _compare(left: pl.DataFrame, right: pl.DataFrame) -> tuple[bool, str]:
    if left.columns != right.columns:
        return False, f"columns differ: {left.columns} vs {right.columns}"
    if left.height != right.height:
        return False, f"{left.height} rows in ClickHouse vs {right.height} in DuckDB"
    for column in left.columns:
        for row, (a, b) in enumerate(zip(left[column].to_list(), right[column].to_list(), strict=True)):
            if not _equal(a, b):
                return False, f"row {row + 1}, {column}: ClickHouse {a!r} vs DuckDB {b!r}"
    return True, f"{left.height} rows equal"


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-12)
    if hasattr(a, "replace") and hasattr(b, "tzinfo") and getattr(a, "tzinfo", None) != b.tzinfo:
        return a.replace(tzinfo=None) == b.replace(tzinfo=None)
    return a == b


def _row_counts(settings: Settings, client: Client, snapshots: duckdb.DuckDBPyConnection) -> list[Check]:
    """Per table: source rows = warehouse rows + quarantined = snapshot rows + quarantined.

    Source rows are counted up to the highest id the warehouse has seen (loaded or quarantined):
    rows written to Postgres after the last sync are not a mismatch, just not synced yet.
    """
    quarantine = client.query(
        "SELECT table_name, count(), max(source_id) FROM quarantine FINAL GROUP BY table_name"
    ).result_rows
    quarantined = {table: (count, max_id) for table, count, max_id in quarantine}
    checks = []
    with connect_postgres(settings) as pg:
        for table in SOURCE_TABLES:
            ch_rows, ch_max = client.query(f"SELECT count(), max(id) FROM {live_rows(table)}").result_rows[0]
            q_rows, q_max = quarantined.get(table, (0, 0))
            synced_max = max(ch_max if ch_rows else 0, q_max or 0)
            pg_rows = pg.execute(f"SELECT count(*) FROM {table} WHERE id <= %s", (synced_max,)).fetchone()[0]
            duck_rows = snapshots.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            ok = pg_rows == ch_rows + q_rows == duck_rows + q_rows
            sign = "=" if ok else "≠"
            detail = (
                f"Postgres {pg_rows:,} {sign} ClickHouse {ch_rows:,} + quarantined {q_rows:,}"
                f" {sign} snapshots {duck_rows:,} + quarantined {q_rows:,}"
            )
            checks.append(Check(f"rows {table}", ok, detail))
    return checks
