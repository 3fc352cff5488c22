"""Fact change application: what a run stages so ClickHouse follows facts updated or deleted in the source.

Change capture (`pipeline.sync.capture`) names the ids that changed; it is a signal, not the data. The rows of
those ids are read again inside the run's snapshot, so the snapshot stays the one source of truth (TOAST and
REPLICA IDENTITY settings do not matter), and compared with the version the warehouse holds:
- a version the warehouse holds that the source no longer has, exactly, is retracted (`<fact>_retracted`);
- a valid source row the warehouse does not hold, exactly, is staged as a new fact row;
- an invalid one goes to quarantine, and quarantine entries that no longer apply are resolved.
Comparing with ClickHouse itself (not a cache) keeps this right after a crash, as for the dimensions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime

import polars as pl
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from pipeline.catalog import FIRST_ID, SOURCE_COLUMNS
from pipeline.sync.clean import UTC_MICROS, clean_facts
from pipeline.warehouse.client import quote_identifier

_BATCH = 200_000
"""Ids per warehouse query, each a scan of the fact table's id column (ids are last in its sort key). They are
written into the query text, sent in the request body, not bound: an HTTP server receives bound parameters in the
URL, which has a size limit. The query's own max_query_size makes room for them (`_id_set`)."""

_QUERY_SETTINGS = {"max_query_size": 4 * 1024 * 1024}

FACT_SCHEMA = {"id": pl.UInt64, "campaign_id": pl.UInt32, "created_at": UTC_MICROS}


@dataclass(frozen=True)
class FactChanges:
    inserts: pl.DataFrame
    """Source versions the warehouse does not hold: typed like the fact table."""
    retractions: pl.DataFrame
    """Versions the warehouse holds that the source no longer has, with the retracting run's id."""
    quarantined: pl.DataFrame
    """New quarantine entries (rows that turned invalid)."""
    resolved: pl.DataFrame
    """Recorded quarantine entries of these ids that no longer apply."""


def fact_changes(
    client: Client, table: str, ids: list[int], source_rows: pa.Table, now: datetime, run_id: str
) -> FactChanges:
    """Compare the source rows of `ids` (read in the run's snapshot) with the warehouse's versions of them."""
    cleaned = clean_facts(table, source_rows, now)
    held = _held_versions(client, table, ids)
    keys = list(SOURCE_COLUMNS[table])
    retractions = held.join(cleaned.valid, on=keys, how="anti").with_columns(pl.lit(run_id).alias("run_id"))
    inserts = cleaned.valid.join(held, on=keys, how="anti")
    recorded = _recorded_quarantine(client, table, ids)
    quarantine_keys = ["table_name", "source_id", "reason"]
    quarantined = cleaned.quarantined.join(recorded.select(quarantine_keys), on=quarantine_keys, how="anti")
    resolved = recorded.join(cleaned.quarantined.select(quarantine_keys), on=quarantine_keys, how="anti")
    return FactChanges(inserts.sort("id"), retractions.sort("id"), quarantined, resolved)


def _held_versions(client: Client, table: str, ids: list[int]) -> pl.DataFrame:
    """The warehouse's live rows of `ids` (its fact tables hold one version per id, and none below `FIRST_ID`).

    A semi join with the ids rather than `id IN`: the same rows, read faster (docs/performance.md, Change capture)."""
    frames = [pl.DataFrame(schema=FACT_SCHEMA)]
    for batch in itertools.batched(sorted(i for i in ids if i >= FIRST_ID), _BATCH):
        arrow = client.query_arrow(
            f"SELECT id, campaign_id, created_at FROM {quote_identifier(table)}"
            f" LEFT SEMI JOIN {_id_set(batch, 'UInt64')} AS changed USING id",
            settings=_QUERY_SETTINGS,
        )
        frames.append(pl.from_arrow(arrow).cast(FACT_SCHEMA))
    return pl.concat(frames)


def _recorded_quarantine(client: Client, table: str, ids: list[int]) -> pl.DataFrame:
    schema = {"table_name": pl.String, "source_id": pl.Int64, "reason": pl.String, "row": pl.String}
    frames = [pl.DataFrame(schema=schema)]
    for batch in itertools.batched(sorted(ids), _BATCH):
        arrow = client.query_arrow(
            "SELECT table_name, source_id, reason, row FROM quarantine FINAL"
            f" WHERE table_name = {{table:String}} AND source_id IN {_id_set(batch, 'Int64')}",
            parameters={"table": table},
            settings=_QUERY_SETTINGS,
        )
        frames.append(pl.from_arrow(arrow).cast(schema))
    return pl.concat(frames)


def _id_set(ids: tuple[int, ...], type_name: str) -> str:
    """A subquery of `ids`, read from one string literal: the server takes 0.1 s or more to analyse a list of
    20,000 literals, and next to nothing to read them as TSV (docs/performance.md, Change capture)."""
    # The ids come from the decoded WAL and are forced to int: nothing user-typed reaches the SQL.
    lines = "\\n".join(str(int(i)) for i in ids)
    return f"(SELECT id FROM format(TSV, 'id {type_name}', '{lines}'))"
