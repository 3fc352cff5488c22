"""Every KPI from the pre-aggregated tables vs the same KPI over the raw event tables, side by side.

    uv run python bench/bench_kpi.py [--impressions 50000000] [--campaigns 5000] [--repeat 5]
                                     [--home /tmp/adpipe-bench-kpi]

The warehouse is filled inside ClickHouse (numbers() → impressions/clicks, so the materialized views fill
campaign_daily/hourly exactly as a sync does) — generating 50M rows through Postgres would measure the
generator, not the queries. The raw variant of each KPI is its own SQL with the aggregate tables replaced
by the same aggregation computed from impressions and clicks at query time: what a warehouse without
the materialized views would have to do. Reports the median of --repeat runs after one warm-up.
Target (KPI issue): < 100 ms per KPI from the aggregates on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

RAW_AGGREGATE = """(
    SELECT campaign_id, {bucket} AS {column}, sum(impressions) AS impressions, sum(clicks) AS clicks
    FROM (
        SELECT campaign_id, {bucket_expr} AS {column}, count() AS impressions, toUInt64(0) AS clicks
        FROM impressions GROUP BY campaign_id, {column}
        UNION ALL
        SELECT campaign_id, {bucket_expr} AS {column}, toUInt64(0) AS impressions, count() AS clicks
        FROM clicks GROUP BY campaign_id, {column}
    )
    GROUP BY campaign_id, {column}
)"""
RAW_TABLES = {
    "campaign_daily": RAW_AGGREGATE.format(bucket="day", column="day", bucket_expr="toDate(created_at)"),
    "campaign_hourly": RAW_AGGREGATE.format(bucket="hour", column="hour", bucket_expr="toStartOfHour(created_at)"),
}
FILL = [
    "INSERT INTO advertiser SELECT number + 1, concat('Advertiser ', toString(number + 1)), NULL, NULL, 0, 1, 0"
    " FROM numbers({advertisers})",
    "INSERT INTO campaign SELECT number + 1, concat('Campaign ', toString(number + 1)), 0.50 + (number % 450) / 100,"
    " 50 + number % 450, today() - 14 + number % 14, today() + number % 16, number % {advertisers} + 1,"
    " NULL, NULL, 0, 1, 0 FROM numbers({campaigns})",
    "INSERT INTO impressions SELECT number + 1, number % {campaigns} + 1,"
    " now64(6, 'UTC') - toIntervalMicrosecond(cityHash64(number) % 604800000000) FROM numbers({impressions})",
    "INSERT INTO clicks SELECT number + 1, number * 13 % {campaigns} + 1,"
    " now64(6, 'UTC') - toIntervalMicrosecond(cityHash64(number, 1) % 604800000000) FROM numbers({clicks})",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impressions", type=int, default=50_000_000)
    parser.add_argument("--campaigns", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--home", type=Path, default=Path("/tmp/adpipe-bench-kpi"))
    args = parser.parse_args()
    os.environ["ADPIPE_HOME"] = str(args.home)
    os.environ.pop("ADPIPE_CLICKHOUSE_URL", None)
    from pipeline.analytics.kpi import Filters, list_kpis, run_clickhouse
    from pipeline.config import load_settings
    from pipeline.warehouse import client as clickhouse
    from pipeline.warehouse.schema import apply_schema

    client = clickhouse.connect(load_settings())
    _fill(client, args, apply_schema)
    daily_rows = client.query("SELECT count() FROM campaign_daily").result_rows[0][0]
    print(
        f"warehouse: {args.impressions:,} impressions, {args.impressions // 12:,} clicks, {args.campaigns:,} campaigns;"
        f" campaign_daily holds {daily_rows:,} rows"
    )
    print(f"{'KPI':<26} {'aggregates':>12} {'raw tables':>12} {'speed-up':>9}  rows  (median of {args.repeat})")
    filters = Filters(min_impressions=1)
    for kpi in list_kpis():
        raw_sql = kpi.clickhouse_sql()
        for table, subquery in RAW_TABLES.items():
            raw_sql = raw_sql.replace(f"FROM {table}", f"FROM {subquery}")
        raw_kpi = _with_sql(kpi, raw_sql, args.home)
        fast, result = _median_ms(run_clickhouse, client, kpi, filters, args.repeat)
        slow, raw_result = _median_ms(run_clickhouse, client, raw_kpi, filters, args.repeat)
        flag = "" if result.equals(raw_result) else "  RESULTS DIFFER"
        print(f"{kpi.name:<26} {fast:9.1f} ms {slow:9.1f} ms {slow / fast:8.1f}×  {result.height:>4}{flag}")


def _fill(client, args: argparse.Namespace, apply_schema) -> None:
    """Create the warehouse once per --home and size; reruns reuse it."""
    have = 0
    if client.query("EXISTS TABLE impressions").result_rows[0][0]:
        have = client.query("SELECT count() FROM impressions").result_rows[0][0]
    if have == args.impressions:
        apply_schema(client)  # a warehouse filled by an older version still gets new views
        return
    for table in ("campaign_daily", "campaign_hourly", "impressions", "clicks", "advertiser", "campaign"):
        client.command(f"DROP TABLE IF EXISTS {table}")
    for view in ("impressions_daily_mv", "clicks_daily_mv", "impressions_hourly_mv", "clicks_hourly_mv"):
        client.command(f"DROP VIEW IF EXISTS {view}")
    apply_schema(client)
    sizes = {
        "advertisers": max(1, args.campaigns // 10),
        "campaigns": args.campaigns,
        "impressions": args.impressions,
        "clicks": args.impressions // 12,
    }
    began = time.perf_counter()
    for statement in FILL:
        client.command(statement.format(**sizes), settings={"max_insert_threads": 2})
    client.command("OPTIMIZE TABLE campaign_daily FINAL")
    client.command("OPTIMIZE TABLE campaign_hourly FINAL")
    print(f"filled the warehouse in {time.perf_counter() - began:.1f} s")


def _with_sql(kpi, sql: str, home: Path):
    """The KPI with another SQL text, written beside the bench's data so run_clickhouse reads it as usual."""
    path = home / "raw_kpi" / f"{kpi.name}.sql"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sql)
    return dataclasses.replace(kpi, clickhouse_path=path)


def _median_ms(run, client, kpi, filters, repeat: int):
    """Median wall time of `repeat` runs after one warm-up, and the result."""
    result = run(client, kpi, filters)
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        run(client, kpi, filters)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), result


if __name__ == "__main__":
    main()
