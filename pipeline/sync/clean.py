"""Casting source rows to warehouse types and validating them with Polars.

Every row either comes out valid, typed like its ClickHouse table, or goes to quarantine with
the first rule it breaks. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa

from pipeline.catalog import COUNTED_TIMES, FIRST_ID

if TYPE_CHECKING:
    from polars.expr.whenthen import Then

FUTURE_TOLERANCE = timedelta(minutes=5)
"""Clock skew allowed between the source's writers and its database clock."""
IN_THE_FUTURE = "created_at in the future"
"""The one reason a fact can stop being true of a row that does not change: time catches up with it. Incremental runs
compare such rows again (`pipeline.sync.execute`)."""

TIMESTAMP_RANGE = (datetime(1900, 1, 1), datetime(2300, 1, 1))
"""The timestamps a dimension row may hold, [from, to): ClickHouse `DateTime64`'s range."""
DATE_RANGE = (date(1970, 1, 1), date(2149, 6, 6))
"""The dates a campaign may hold, both ends included: ClickHouse `Date`'s range (an insert outside it fails).

Postgres' `infinity` and `-infinity` are outside every range here: the reader's conversion to Arrow turns them
into values hundreds of thousands of years back."""
_PRINTABLE = (date(1, 1, 1), date(9999, 12, 31))
"""The dates a quarantined row's JSON spells out; further ones (the infinities above) are written as null."""

UTC_MICROS = pl.Datetime("us", "UTC")
MONEY = pl.Decimal(10, 2)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("table_name", pa.string()),
        ("source_id", pa.int64()),
        ("reason", pa.string()),
        ("row", pa.string()),
        ("version", pa.uint64()),
        ("is_resolved", pa.uint8()),
    ]
)


@dataclass(frozen=True)
class Cleaned:
    valid: pl.DataFrame
    """Typed like the warehouse table (dimensions without version/is_deleted, which the sync assigns)."""
    quarantined: pl.DataFrame
    """Columns of QUARANTINE_SCHEMA, without version/is_resolved."""


def clean_facts(table: str, rows: pa.Table, now: datetime) -> Cleaned:
    """Impressions or clicks: ids the warehouse takes, a campaign, and a created_at in `COUNTED_TIMES`, up to `now`
    plus the tolerance."""
    frame = pl.from_arrow(rows)
    reason = (
        _id_below_first("id")
        .when(pl.col("campaign_id").is_null())
        .then(pl.lit("campaign_id is NULL"))
        .when(pl.col("campaign_id") < FIRST_ID)
        .then(pl.lit(f"campaign_id below {FIRST_ID}"))
        .when(pl.col("created_at").is_null())
        .then(pl.lit("created_at is NULL"))
        .when(~pl.col("created_at").is_between(*COUNTED_TIMES, closed="left"))
        .then(pl.lit("created_at out of range"))
        .when(pl.col("created_at") > now + FUTURE_TOLERANCE)
        .then(pl.lit(IN_THE_FUTURE))
    )
    valid, quarantined = _split(table, frame, reason)
    valid = valid.select(
        pl.col("id").cast(pl.UInt64),
        pl.col("campaign_id").cast(pl.UInt32),
        pl.col("created_at").dt.replace_time_zone("UTC").cast(UTC_MICROS),
    )
    return Cleaned(valid, quarantined)


def clean_advertisers(rows: pa.Table) -> Cleaned:
    """Advertisers need a name, and times the warehouse holds."""
    frame = pl.from_arrow(rows)
    reason = _out_of_range(
        _id_below_first("id").when(pl.col("name").str.strip_chars() == "").then(pl.lit("advertiser name is empty")),
        ["updated_at", "created_at"],
    )
    valid, quarantined = _split("advertiser", frame, reason)
    valid = valid.select(
        pl.col("id").cast(pl.UInt32),
        pl.col("name"),
        _utc("updated_at"),
        _utc("created_at"),
    )
    return Cleaned(_with_row_hash(valid), quarantined)


def clean_campaigns(rows: pa.Table, advertiser_ids: pl.Series) -> Cleaned:
    """Campaigns need a valid advertiser, positive money, dates and times the warehouse holds, and a flight that
    does not end before it starts."""
    frame = pl.from_arrow(rows).with_columns(pl.col("bid", "budget").cast(MONEY))
    reason = (
        _id_below_first("id")
        .when(pl.col("advertiser_id").is_null() | ~pl.col("advertiser_id").is_in(advertiser_ids.implode()))
        .then(pl.lit("campaign without advertiser"))
        .when(pl.col("bid") <= 0)
        .then(pl.lit("bid <= 0"))
        .when(pl.col("budget") <= 0)
        .then(pl.lit("budget <= 0"))
    )
    reason = _out_of_range(reason, ["start_date", "end_date", "updated_at", "created_at"])
    reason = reason.when(pl.col("end_date") < pl.col("start_date")).then(pl.lit("end_date before start_date"))
    valid, quarantined = _split("campaign", frame, reason)
    valid = valid.select(
        pl.col("id").cast(pl.UInt32),
        pl.col("name"),
        pl.col("bid"),
        pl.col("budget"),
        pl.col("start_date"),
        pl.col("end_date"),
        pl.col("advertiser_id").cast(pl.UInt32),
        _utc("updated_at"),
        _utc("created_at"),
    )
    return Cleaned(_with_row_hash(valid), quarantined)


def _id_below_first(column: str) -> Then:
    """The first rule of every table: the warehouse keys rows by unsigned ids from `FIRST_ID` up."""
    return pl.when(pl.col(column) < FIRST_ID).then(pl.lit(f"{column} below {FIRST_ID}"))


def _out_of_range(rules: Then, columns: list[str]) -> Then:
    """`rules`, then one per column: a value the warehouse's type cannot hold (`DATE_RANGE`, `TIMESTAMP_RANGE`)."""
    for column in columns:
        low, high = DATE_RANGE if column.endswith("_date") else TIMESTAMP_RANGE
        inside = pl.col(column).is_between(low, high, closed="both" if column.endswith("_date") else "left")
        rules = rules.when(~inside).then(pl.lit(f"{column} out of range"))
    return rules


def _split(table: str, frame: pl.DataFrame, reason: pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows with no reason, and the others as quarantine entries keeping the source row as JSON."""
    source_columns = frame.columns
    frame = frame.with_columns(reason.alias("_reason"))
    quarantined = frame.filter(pl.col("_reason").is_not_null()).select(
        pl.lit(table).alias("table_name"),
        pl.col("id").cast(pl.Int64).alias("source_id"),
        pl.col("_reason").alias("reason"),
        pl.struct([_printable(frame, column) for column in source_columns]).struct.json_encode().alias("row"),
    )
    return frame.filter(pl.col("_reason").is_null()).drop("_reason"), quarantined


def _printable(frame: pl.DataFrame, column: str) -> pl.Expr:
    """The column for a quarantined row's JSON: Polars cannot spell out a date beyond `_PRINTABLE`, and stops."""
    dtype = frame.schema[column]
    if dtype == pl.Date:
        low, high = _PRINTABLE
    elif isinstance(dtype, pl.Datetime):
        low, high = (datetime.combine(day, datetime.min.time()) for day in _PRINTABLE)
    else:
        return pl.col(column)
    return pl.when(pl.col(column).is_between(low, high)).then(pl.col(column)).alias(column)


def _utc(column: str) -> pl.Expr:
    # Source timestamps are WITHOUT TIME ZONE and hold UTC: state it, do not convert.
    return pl.col(column).dt.replace_time_zone("UTC").cast(UTC_MICROS)


def _with_row_hash(frame: pl.DataFrame) -> pl.DataFrame:
    """A stable 64-bit hash of each row's source columns, for change detection across runs.

    BLAKE2 over a canonical text, not Polars' hash, whose values may change between versions.
    Dimensions are small, so the per-row Python cost does not matter.
    """
    texts = frame.select(
        pl.concat_str([pl.col(c).cast(pl.String).fill_null("\x00") for c in frame.columns], separator="\x1f")
    ).to_series()
    hashes = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in texts]
    return frame.with_columns(pl.Series("row_hash", hashes, dtype=pl.UInt64))


def quarantine_arrow(frames: list[pl.DataFrame], version: int, resolved: bool = False) -> pa.Table:
    """Quarantine entries as an Arrow table in the warehouse's quarantine schema."""
    empty = pl.DataFrame(schema={"table_name": pl.String, "source_id": pl.Int64, "reason": pl.String, "row": pl.String})
    frame = pl.concat([empty, *frames], how="vertical_relaxed").with_columns(
        pl.col("source_id").cast(pl.Int64),
        pl.lit(version, pl.UInt64).alias("version"),
        pl.lit(int(resolved), pl.UInt8).alias("is_resolved"),
    )
    return frame.to_arrow().cast(QUARANTINE_SCHEMA)
