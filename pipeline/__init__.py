"""adpipe: advertising data from Postgres to ClickHouse, through audited Parquet snapshots."""

__version__ = "0.1.0"
