"""Referral events: `adpipe events load --mode stream` side by side with DuckDB and pandas on the same file.

    uv run python bench/bench_events.py [--events 10000000] [--cache /tmp/adpipe-bench-events] [--pandas-lines N]
                                        [--rounds 3]

The file is generated once into --cache (reruns reuse it). Then, in one run, --rounds times in turn (each load from an
empty staging directory; on a 2-core machine one run of the same code varies by ±10%, so the table gives medians and
each round's ratio to DuckDB's run in the same round), then pandas once:
  adpipe   `adpipe events load FILE --mode stream --json` in a subprocess, from an empty staging directory:
           end to end (clean, stage Parquet, reports into Postgres, events into ClickHouse), and its peak RSS
           (VmHWM, so Linux only)
  duckdb   read_json + the same hourly aggregates (page loads, clicks, unique users, related clicks) in SQL,
           then checked row for row against what adpipe wrote to Postgres
  adpipe aggregates  stream mode's reading, cleaning and aggregation alone, in-process (no staging, Postgres or
           ClickHouse), checked row for row against DuckDB's
  pandas   the usual approach: read_json(lines=True) + groupby (+ merge_asof for related clicks). It cannot
           read a file with malformed lines, so it gets the well-formed lines (filtered beforehand, untimed);
           with --pandas-lines it runs on the first N of them and its rate is quoted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

WINDOW = 300
DUCKDB_SQL = """
WITH raw AS (
    SELECT * FROM read_json($path, format = 'newline_delimited', ignore_errors = true,
        columns = {event_id: 'VARCHAR', customer_id: 'BIGINT', user_id: 'BIGINT', fired_at: 'VARCHAR',
                   event_type: 'VARCHAR'})
),
valid AS (
    SELECT event_id, customer_id, user_id, event_type,
           coalesce(try_strptime(fired_at, '%m/%d/%Y, %H:%M:%S'), try_strptime(fired_at, '%Y-%m-%dT%H:%M:%SZ'))
               AS fired_at
    FROM raw
    WHERE event_id IS NOT NULL AND customer_id IS NOT NULL AND user_id IS NOT NULL
      AND event_type IN ('ReferralPageLoad', 'ReferralRecommendClick', 'FaqClick')
),
events AS (
    SELECT * FROM valid WHERE fired_at IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY event_id, event_type ORDER BY fired_at, customer_id, user_id) = 1
),
loads AS (SELECT customer_id, user_id, event_id, fired_at FROM events WHERE event_type = 'ReferralPageLoad'),
clicks AS (SELECT customer_id, user_id, event_id, fired_at FROM events WHERE event_type = 'ReferralRecommendClick'),
related AS (
    -- a hash join on customer and user, then the time conditions (an ASOF join was 60x slower here)
    SELECT DISTINCT c.event_id FROM clicks c JOIN loads l USING (customer_id, user_id)
    WHERE l.fired_at <= c.fired_at
      AND (l.fired_at >= c.fired_at - to_seconds($window)
           OR (l.event_id = c.event_id AND l.fired_at >= c.fired_at - INTERVAL 1 HOUR))
),
click_hours AS (
    SELECT customer_id, date_trunc('hour', fired_at) AS hour, count(*) AS clicks,
           count(DISTINCT user_id) AS unique_user_clicks,
           count(related.event_id) AS related_clicks
    FROM clicks LEFT JOIN related USING (event_id)
    GROUP BY ALL
),
load_hours AS (
    SELECT customer_id, date_trunc('hour', fired_at) AS hour, count(*) AS page_loads FROM loads GROUP BY ALL
)
SELECT customer_id, hour, coalesce(page_loads, 0) AS page_loads, coalesce(clicks, 0) AS clicks,
       coalesce(unique_user_clicks, 0) AS unique_user_clicks, coalesce(related_clicks, 0) AS related_clicks
FROM load_hours FULL JOIN click_hours USING (customer_id, hour)
ORDER BY customer_id, hour
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/adpipe-bench-events"))
    parser.add_argument("--pandas-lines", type=int, default=None, help="pandas on the first N lines only")
    parser.add_argument("--rounds", type=int, default=3, help="adpipe, DuckDB and adpipe's aggregation, N times each")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    args.cache.mkdir(parents=True, exist_ok=True)
    path = args.cache / f"events-{args.events}-{args.customers}-{args.users}-{args.seed}.jsonl"
    if not path.exists():
        started = time.perf_counter()
        _adpipe(
            "events",
            "generate",
            "--out",
            str(path),
            "--events",
            str(args.events),
            "--customers",
            str(args.customers),
            "--users",
            str(args.users),
            "--seed",
            str(args.seed),
        )
        print(f"generated {path} in {time.perf_counter() - started:.1f} s")
    lines = args.events
    print(f"file: {path} ({path.stat().st_size / 2**20:,.0f} MiB, {lines:,} lines)")

    os.environ["ADPIPE_HOME"] = str(args.cache / "home")
    os.environ["ADPIPE_STAGING_DIR"] = str(args.cache / "staging")
    seconds: dict[str, list[float]] = {"adpipe": [], "core": [], "aggregates": [], "duckdb": []}
    peak_rss = []
    for round_number in range(1, args.rounds + 1):
        print(f"round {round_number} of {args.rounds}")
        shutil.rmtree(args.cache / "staging", ignore_errors=True)
        adpipe_seconds, rss, summary = _adpipe_stream(path)
        print(
            f"  adpipe stream load : {adpipe_seconds:7.2f} s wall (process) {lines / adpipe_seconds:12,.0f} events/s"
            f"  peak RSS {rss / 1024:,.0f} MiB"
        )
        print(f"     in-process      : {summary['seconds']:.2f} s {json.dumps(summary['timings_s'])}")
        duck_seconds, duck = _duckdb(path)
        print(f"  duckdb aggregates  : {duck_seconds:7.2f} s {lines / duck_seconds:12,.0f} events/s")
        ours = _postgres_reports()
        print(f"     duckdb rows == adpipe's Postgres rows: {duck == ours} ({len(duck):,} vs {len(ours):,} rows)")
        aggregates_seconds, aggregated = _aggregates_only(path)
        print(f"  adpipe aggregates  : {aggregates_seconds:7.2f} s {lines / aggregates_seconds:12,.0f} events/s")
        print(f"     == duckdb rows: {aggregated == duck}")
        if not duck == ours == aggregated:
            raise SystemExit("the reports differ: adpipe's and DuckDB's rows must be identical (see above)")
        seconds["adpipe"].append(adpipe_seconds)
        seconds["core"].append(summary["timings_s"]["read_clean_stage"] + summary["timings_s"]["reports"])
        seconds["aggregates"].append(aggregates_seconds)
        seconds["duckdb"].append(duck_seconds)
        peak_rss.append(rss)

    pandas_lines, pandas_seconds = _pandas(path, args.cache, args.pandas_lines)
    print(
        f"pandas read_json   : {pandas_seconds:7.2f} s {pandas_lines / pandas_seconds:12,.0f} events/s"
        f" (on {pandas_lines:,} well-formed lines)"
    )

    pandas_rate = pandas_lines / pandas_seconds
    duck_rate = lines / statistics.median(seconds["duckdb"])
    print(f"\n{args.rounds} rounds: the median, and in brackets each round's ratio to DuckDB's in the same round")
    print("| run | s, median (min–max) | events/s | vs pandas | vs DuckDB |")
    print("|---|---|---|---|---|")
    for name, label in (
        ("adpipe", "adpipe events load --mode stream (end to end, process wall)"),
        ("core", "  of which read+clean+stage+reports, ClickHouse mirrored alongside (in-process)"),
        ("aggregates", "adpipe's stream aggregation alone: read+clean+aggregate, no staging/Postgres/ClickHouse"),
        ("duckdb", "DuckDB read_json + SQL aggregates"),
    ):
        runs = seconds[name]
        rate = lines / statistics.median(runs)
        paired = [duck / ours for duck, ours in zip(seconds["duckdb"], runs, strict=True)]
        print(
            f"| {label} | {statistics.median(runs):.2f} ({min(runs):.2f}–{max(runs):.2f}) | {rate:,.0f}"
            f" | {rate / pandas_rate:.1f}× | {rate / duck_rate:.2f}× ({min(paired):.2f}–{max(paired):.2f}) |"
        )
    print(
        f"| pandas read_json(lines=True) + groupby | {pandas_seconds:.2f} | {pandas_rate:,.0f} | 1.0×"
        f" | {pandas_rate / duck_rate:.2f}× |"
    )
    print(f"\npeak RSS of the stream load: {min(peak_rss) / 1024:,.0f}–{max(peak_rss) / 1024:,.0f} MiB")


def _adpipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], check=True, capture_output=True, text=True)


PEAK_RSS_AT_EXIT = """
import atexit, runpy, sys
def report():
    with open("/proc/self/status") as status:
        print(next(line for line in status if line.startswith("VmHWM:")).strip(), file=sys.stderr)
atexit.register(report)
sys.argv = ["adpipe", *sys.argv[1:]]
runpy.run_module("pipeline", run_name="__main__")
"""
"""Runs the CLI and prints its peak RSS (Linux VmHWM) as it exits. Not wait4's ru_maxrss: the child is forked from
this process (vfork), and Linux carries the parent's high-water mark into it, which after a round of DuckDB and the
in-process aggregation is ~1.9 GB, not the load's."""


def _adpipe_stream(path: Path) -> tuple[float, int, dict]:
    """Wall time, peak RSS (KiB) of the load process and its --json summary."""
    command = ["events", "load", str(path), "--mode", "stream", "--window", str(WINDOW), "--json"]
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", PEAK_RSS_AT_EXIT, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    output, errors = child.communicate()
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"adpipe events load failed with exit code {child.returncode}: {errors.strip()}")
    peak = next(line for line in reversed(errors.splitlines()) if line.startswith("VmHWM:"))
    return seconds, int(peak.split()[1]), json.loads(output)


def _duckdb(path: Path) -> tuple[float, list[tuple]]:
    import duckdb

    con = duckdb.connect()
    started = time.perf_counter()
    rows = con.execute(DUCKDB_SQL, {"path": str(path), "window": WINDOW}).fetchall()
    return time.perf_counter() - started, rows


def _postgres_reports() -> list[tuple]:
    from pipeline.config import load_settings
    from pipeline.referral.publish import read_reports
    from pipeline.source.postgres import connect

    with connect(load_settings()) as conn:
        return [row[:6] for row in read_reports(conn, None, None, None).rows()]


def _aggregates_only(path: Path) -> tuple[float, list[tuple]]:
    """The stream mode's computation alone, in this process: the same reader, cleaning and StreamAggregator as
    `events load --mode stream` (read and cleaned a chunk ahead in a thread), without staging, Postgres or
    ClickHouse: what compares with DuckDB's query."""
    from datetime import timedelta

    from pipeline.prefetch import prefetch
    from pipeline.referral.clean import clean_chunk
    from pipeline.referral.lines import iter_line_chunks
    from pipeline.referral.stream import StreamAggregator

    started = time.perf_counter()
    aggregator = StreamAggregator(timedelta(seconds=WINDOW))
    for cleaned in prefetch(clean_chunk(chunk, str(path)) for chunk in iter_line_chunks(path)):
        aggregator.push(cleaned.events)
    reports = aggregator.finish()
    return time.perf_counter() - started, reports.rows()


def _pandas(path: Path, cache: Path, limit: int | None) -> tuple[int, float]:
    import pandas as pd

    well_formed = cache / f"{path.stem}-well-formed-{limit or 'all'}.jsonl"
    if not well_formed.exists():
        import polars as pl

        lines = pl.read_csv(path, has_header=False, separator="\x1f", quote_char=None, new_columns=["l"])["l"]
        lines = lines.filter(lines.str.ends_with("}"))
        if limit:
            lines = lines.head(limit)
        well_formed.write_text("\n".join(lines.to_list()) + "\n")
    started = time.perf_counter()
    frame = pd.read_json(well_formed, lines=True, dtype=False)
    frame = frame[frame["event_type"].isin(["ReferralPageLoad", "ReferralRecommendClick", "FaqClick"])]
    frame = frame.dropna(subset=["event_id", "customer_id", "user_id", "fired_at"])
    frame["fired_at"] = pd.to_datetime(frame["fired_at"], format="mixed", errors="coerce", utc=True)
    frame = frame.dropna(subset=["fired_at"]).sort_values("fired_at")
    frame = frame.drop_duplicates(["event_id", "event_type"])
    frame["hour"] = frame["fired_at"].dt.floor("h")
    loads = frame[frame["event_type"] == "ReferralPageLoad"]
    clicks = frame[frame["event_type"] == "ReferralRecommendClick"]
    page_loads = loads.groupby(["customer_id", "hour"]).size()
    click_stats = clicks.groupby(["customer_id", "hour"]).agg(clicks=("user_id", "size"), users=("user_id", "nunique"))
    latest = pd.merge_asof(
        clicks,
        loads[["customer_id", "user_id", "fired_at"]].rename(columns={"fired_at": "load_at"}),
        left_on="fired_at",
        right_on="load_at",
        by=["customer_id", "user_id"],
    )
    latest["related"] = (latest["fired_at"] - latest["load_at"]) <= pd.Timedelta(seconds=WINDOW)
    related = latest.groupby(["customer_id", "hour"])["related"].sum()
    pd.concat([page_loads.rename("page_loads"), click_stats, related], axis=1)
    return len(frame), time.perf_counter() - started


if __name__ == "__main__":
    main()
