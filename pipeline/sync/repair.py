"""`adpipe sync --repair`: find facts that differ between the source and the warehouse without change capture.

Both sides are cut into buckets of `BUCKET_IDS` consecutive ids below the high-water mark, and each bucket is
summarised by its row count and the sum of a per-row checksum computed by the same integer arithmetic in Postgres
and in ClickHouse. Only the ids of buckets that differ are compared row by row (`pipeline.sync.fact_changes`), so a
repair reads every row once on each side (one scan) but moves only what changed.

The checksum is a polynomial of id, campaign_id and created_at (microseconds since the epoch) modulo a prime below
2^31, so no product overflows 64 bits on either side. Each field is weighted by a factor drawn from the row's id: a
sum of terms linear in the fields alone stayed the same when two rows of a bucket swapped their campaigns, or one
moved +k and another -k. A changed bucket goes unnoticed with a chance of about 1 in 2^31.
Source rows that are in quarantine are counted on the source side only, so their buckets always differ; the row
comparison then finds them unchanged. Every quarantined id is compared too, so an entry whose row left the source is
resolved. Both are cheap: quarantine is small.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from pipeline.sync.extract import SourceReader
from pipeline.warehouse.client import quote_identifier

BUCKET_IDS = 10_000
_PRIME = 2_147_483_629
_A, _B, _C = 1_000_003, 999_983, 998_927


def _row_checksum(row_id: str, campaign: str, micros: str) -> str:
    """The per-row checksum as SQL both engines evaluate to the same integer (64-bit operands, each product of two
    numbers below 2^31): the id, and each field times a weight of its own that the id gives (distinct ids of a
    bucket give distinct weights)."""
    key = f"({row_id} % {_PRIME})"
    campaign_weight = f"(({key} * {_B} + 1) % {_PRIME})"
    time_weight = f"(({key} * {_C} + 7) % {_PRIME})"
    return (
        f"({key} * {_A} % {_PRIME} + {campaign} % {_PRIME} * {campaign_weight} % {_PRIME}"
        f" + {micros} % {_PRIME} * {time_weight} % {_PRIME}) % {_PRIME}"
    )


# 64-bit operands on both sides (the source's ids and campaign ids are 32-bit integers); a doubled `%` in Postgres,
# where it marks psycopg's placeholders in a query with bound values.
_POSTGRES_CHECKSUM = _row_checksum(
    "id::bigint", "campaign_id::bigint", "(extract(epoch FROM created_at) * 1000000)::bigint"
).replace("%", "%%")
_CLICKHOUSE_CHECKSUM = _row_checksum("id", "toUInt64(campaign_id)", "toUnixTimestamp64Micro(created_at)")


def differing_buckets(reader: SourceReader, client: Client, table: str, upto: int) -> list[tuple[int, int]]:
    """The id ranges [lo, hi] (buckets, at most `upto`) whose rows differ between the source and the warehouse."""
    source = reader.coordinator.execute(
        f"SELECT id / {BUCKET_IDS}, count(*), sum({_POSTGRES_CHECKSUM})"
        f" FROM {table} WHERE id <= %s AND campaign_id IS NOT NULL GROUP BY 1",
        (upto,),
    ).fetchall()
    warehouse = client.query(
        f"SELECT intDiv(id, {BUCKET_IDS}) AS bucket, count(), sum({_CLICKHOUSE_CHECKSUM})"
        f" FROM {quote_identifier(table)} WHERE id <= {{upto:UInt64}} GROUP BY bucket",
        parameters={"upto": upto},
    ).result_rows
    summaries = {int(bucket): (int(rows), int(total)) for bucket, rows, total in warehouse}
    differing = set()
    for bucket, rows, total in source:
        if summaries.pop(int(bucket), None) != (int(rows), int(total)):
            differing.add(int(bucket))
    differing |= summaries.keys()  # buckets only the warehouse has: their rows left the source
    return [(b * BUCKET_IDS, min(upto, (b + 1) * BUCKET_IDS - 1)) for b in sorted(differing)]


def bucket_ids(reader: SourceReader, client: Client, table: str, ranges: list[tuple[int, int]]) -> set[int]:
    """Every id in the ranges on either side: the rows to compare one by one."""
    if not ranges:
        return set()
    condition = " OR ".join(f"id BETWEEN {int(lo)} AND {int(hi)}" for lo, hi in ranges)
    source = reader.coordinator.execute(f"SELECT id FROM {table} WHERE {condition}").fetchall()
    warehouse = client.query(f"SELECT id FROM {quote_identifier(table)} WHERE {condition}").result_rows
    return {row[0] for row in source} | {row[0] for row in warehouse}
