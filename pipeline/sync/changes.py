"""Dimension change detection: what an incremental sync must write to make ClickHouse equal the source.

`updated_at` is not trusted (an UPDATE may leave it alone, or it may be NULL): each valid source
row's hash is compared with the hash of the live version in ClickHouse. Rows that disappeared from
the source, or turned invalid, get a delete marker; quarantine entries that no longer apply get
a resolved marker. Comparing with ClickHouse itself (not a local cache) keeps this right after a
crash: whatever was loaded is what the next run compares against.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from clickhouse_connect.driver.client import Client

from pipeline.sync.clean import Cleaned


@dataclass(frozen=True)
class DimensionChanges:
    upserts: pl.DataFrame
    """New and changed valid rows, and delete markers, with version and is_deleted set."""
    quarantined: pl.DataFrame
    """Quarantine entries not already recorded."""
    resolved: pl.DataFrame
    """Recorded quarantine entries that no longer apply."""

    @property
    def empty(self) -> bool:
        return self.upserts.is_empty() and self.quarantined.is_empty() and self.resolved.is_empty()


def dimension_changes(client: Client, table: str, cleaned: Cleaned, version: int) -> DimensionChanges:
    live = pl.from_arrow(client.query_arrow(f"SELECT * FROM {table} FINAL WHERE is_deleted = 0"))
    valid = cleaned.valid
    changed = valid.join(live.select("id", "row_hash"), on=["id", "row_hash"], how="anti")
    gone = live.join(valid.select("id"), on="id", how="anti")
    upserts = pl.concat(
        [
            _versioned(changed, version, deleted=False),
            _versioned(gone.drop("version", "is_deleted"), version, deleted=True),
        ]
    )
    recorded = pl.from_arrow(
        client.query_arrow(
            "SELECT table_name, source_id, reason, row FROM quarantine FINAL WHERE table_name = {table:String}",
            parameters={"table": table},
        )
    )
    keys = ["table_name", "source_id", "reason"]
    quarantined = cleaned.quarantined.join(recorded.select(keys), on=keys, how="anti")
    resolved = recorded.join(cleaned.quarantined.select(keys), on=keys, how="anti")
    return DimensionChanges(upserts, quarantined, resolved)


def full_load_rows(cleaned: Cleaned, version: int) -> pl.DataFrame:
    """Every valid row as the first version, for a full sync."""
    return _versioned(cleaned.valid, version, deleted=False)


def _versioned(frame: pl.DataFrame, version: int, *, deleted: bool) -> pl.DataFrame:
    return frame.with_columns(
        pl.lit(version, pl.UInt64).alias("version"),
        pl.lit(int(deleted), pl.UInt8).alias("is_deleted"),
    )
