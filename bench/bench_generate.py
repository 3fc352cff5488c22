"""Generator throughput, side by side with what a user would otherwise write.

    uv run python bench/bench_generate.py [--impressions 1000000] [--campaigns 10] [--ctr 0.08]
                                          [--sample 100000] [--home /tmp/adpipe-bench-generate]

Same run, same embedded Postgres, a fresh database each time:
  adpipe batch    Generator.batch: 1 advertiser, --campaigns campaigns sharing --impressions, clicks at --ctr
  adpipe 1×N      Generator.impressions on one campaign (several chunks), then Generator.clicks at --ctr
  executemany     psycopg `executemany` INSERT of the rows the generator wrote (the first --sample impressions and
                  their share of clicks), in one transaction; extrapolated to the full count when the sample is smaller
The peak RSS printed is this process's, after all the steps.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import psycopg

DATABASE = "bench_generate"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impressions", type=int, default=1_000_000)
    parser.add_argument("--campaigns", type=int, default=10)
    parser.add_argument("--ctr", type=float, default=0.08)
    parser.add_argument("--sample", type=int, default=100_000, help="impressions inserted with executemany")
    parser.add_argument("--home", type=Path, default=Path("/tmp/adpipe-bench-generate"))
    args = parser.parse_args()

    from pipeline.source.generate import Generator, reset
    from pipeline.source.postgres import EmbeddedPostgres, apply_source_schema

    server_url = EmbeddedPostgres(args.home / "postgres").url()
    url = _fresh_database(server_url)
    with psycopg.connect(url) as conn:
        apply_source_schema(conn)
        generator = Generator(conn, seed=42)

        began = time.perf_counter()
        result = generator.batch(1, args.campaigns, args.impressions // args.campaigns, args.ctr)
        batch_seconds = time.perf_counter() - began
        _report(f"adpipe batch (1 × {args.campaigns} campaigns)", result.impressions, result.clicks, batch_seconds)

        sample = _sample(conn, args.sample)
        reset(conn)
        generator.batch(1, 1, 0, args.ctr)
        began = time.perf_counter()
        impressions = generator.impressions(1, args.impressions)
        clicks = generator.clicks(1, args.ctr)
        single_seconds = time.perf_counter() - began
        _report("adpipe impressions + clicks (1 campaign)", impressions, clicks, single_seconds)

        reset(conn)
        generator.batch(1, args.campaigns, 0, args.ctr)
        sample_impressions, sample_clicks = sample
        began = time.perf_counter()
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany("INSERT INTO impressions (campaign_id, created_at) VALUES (%s, %s)", sample_impressions)
            cursor.executemany("INSERT INTO clicks (campaign_id, created_at) VALUES (%s, %s)", sample_clicks)
        sample_seconds = time.perf_counter() - began
        sample_rows = len(sample_impressions) + len(sample_clicks)
        naive_rate = sample_rows / sample_seconds
        full_rows = result.impressions + result.clicks
        extrapolated = full_rows / naive_rate
        note = "measured" if len(sample_impressions) >= result.impressions else "extrapolated from the sample"
        print(
            f"{'psycopg executemany':42s}: {len(sample_impressions):,} impressions + {len(sample_clicks):,} clicks "
            f"in {sample_seconds:.2f} s = {naive_rate:,.0f} rows/s; {full_rows:,} rows: {extrapolated:.1f} s ({note})"
        )
        adpipe_rate = full_rows / batch_seconds
        print(f"adpipe batch vs executemany: {adpipe_rate / naive_rate:.1f}x the rows/s")
    _drop_database(server_url)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    print(f"(the embedded Postgres keeps running: ADPIPE_HOME={args.home} uv run adpipe down stops it)")


def _report(label: str, impressions: int, clicks: int, seconds: float) -> None:
    rows = impressions + clicks
    print(
        f"{label:42s}: {impressions:,} impressions + {clicks:,} clicks in {seconds:.2f} s = "
        f"{impressions / seconds:,.0f} impressions/s, {rows / seconds:,.0f} rows/s"
    )


def _sample(conn: psycopg.Connection, impressions: int) -> tuple[list[tuple], list[tuple]]:
    """The first `impressions` generated impressions and the same share of the clicks, as Python rows."""
    total_impressions, total_clicks = conn.execute(
        "SELECT (SELECT count(*) FROM impressions), (SELECT count(*) FROM clicks)"
    ).fetchone()
    clicks = round(total_clicks * min(impressions, total_impressions) / total_impressions)
    return (
        conn.execute("SELECT campaign_id, created_at FROM impressions ORDER BY id LIMIT %s", (impressions,)).fetchall(),
        conn.execute("SELECT campaign_id, created_at FROM clicks ORDER BY id LIMIT %s", (clicks,)).fetchall(),
    )


def _fresh_database(server_url: str) -> str:
    _drop_database(server_url)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")
    return server_url.rsplit("/", 1)[0] + f"/{DATABASE}"


def _drop_database(server_url: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


if __name__ == "__main__":
    main()
