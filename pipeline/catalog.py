"""The one table catalogue: which tables adpipe syncs, in what order, and how each is stored in the warehouse.

Every other module asks here instead of keeping its own list.
"""

from __future__ import annotations

from datetime import datetime

DIMENSIONS = ("advertiser", "campaign")
"""Source tables re-read whole on every run; changes are found by row hashes (`pipeline.sync.changes`)."""
FACTS = ("impressions", "clicks")
"""Append-mostly source tables, synced by id with late-commit gaps (`pipeline.sync.gaps`)."""
FIRST_ID = 1
"""The lowest id the warehouse takes: SERIAL ids start at 1, and the warehouse keys rows by unsigned ids. A row
written with a lower id (the source allows any) is read on every run (`SourceReader.read_ids_in`) and set aside in
quarantine (`pipeline.sync.clean`): an id sync reads only above its high-water id, which starts at 0."""
COUNTED_TIMES = (datetime(1970, 1, 1), datetime(2106, 2, 7))
"""The event times the warehouse counts per day and hour, [from, to): ClickHouse `Date` and `DateTime` hold those
(an impression, click or referral event outside would be counted on another day). Rows outside go to quarantine as
out of range, even those in the future: no clock brings them in."""
SOURCE_TABLES = (*DIMENSIONS, *FACTS)
"""The source tables, parents before children (the order their foreign keys need)."""

SOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "advertiser": ("id", "name", "updated_at", "created_at"),
    "campaign": ("id", "name", "bid", "budget", "start_date", "end_date", "advertiser_id", "updated_at", "created_at"),
    "impressions": ("id", "campaign_id", "created_at"),
    "clicks": ("id", "campaign_id", "created_at"),
}
"""What the sync reads of each source table."""

AGGREGATES = ("campaign_daily", "campaign_hourly")
"""Tables the materialized views fill from the facts."""

RETRACTED = {table: f"{table}_retracted" for table in FACTS}
"""Per fact table, the warehouse table of the old versions of its rows that were updated or deleted in the source
(schemas/clickhouse/008_fact_retractions.sql). Its materialized views subtract them from the aggregates."""

RETRACTED_COLUMNS = (*SOURCE_COLUMNS["impressions"], "run_id")
"""The columns of a retraction: the fact as the warehouse held it, and the run that retracted it."""

LOAD_ORDER = (*DIMENSIONS, *RETRACTED.values(), *FACTS, "quarantine")
"""Dimensions before facts, so a reader never sees an event whose campaign is not there yet; a fact's retractions
before its new rows, so the delete of the old versions runs before the new versions arrive."""

SWAPPED_TABLES = (*SOURCE_TABLES, *RETRACTED.values(), *AGGREGATES, "quarantine")
"""What a full sync replaces; sync_runs (history) and other systems' tables stay."""

SHARDED = {
    "impressions": "campaign_id",
    "clicks": "campaign_id",
    "impressions_retracted": "campaign_id",
    "clicks_retracted": "campaign_id",
    "campaign_daily": "campaign_id",
    "campaign_hourly": "campaign_id",
}
"""Tables split over the shards of a cluster, with their sharding key. Facts, retractions and aggregates share the
key, so the rows a materialized view derives from a shard's events belong to that same shard, and a retraction
lands on the shard holding the version it retracts."""


def live_rows(table: str) -> str:
    """The warehouse relation holding `table`'s live rows: one per id as in the source now.

    A dimension keeps every version of a row (ReplacingMergeTree); its live rows are the latest version of each id,
    deleted ones left out: the `current_*` views of schemas/clickhouse/007_live_dimensions.sql, which the KPIs'
    `live_*` views build on. A fact table holds one row per id.
    """
    return f"current_{table}" if table in DIMENSIONS else table
