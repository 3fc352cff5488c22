"""Full and incremental sync throughput, side by side with what a user would otherwise do.

    uv run python bench/bench_sync.py [--campaigns 500] [--impressions-per-campaign 10000] [--home /tmp/adpipe-bench]
    uv run python bench/bench_sync.py layouts [--rounds 3] [--only dense,jump,random] [--sync-args "--partitions 1"]

`layouts`: the same rows with three id layouts, each in its own Postgres database and each synced from a fresh
ADPIPE_HOME: dense ids, ids that jump by 2,000,000,000 halfway (a `setval`), and random gaps (ids spread over
three times their count). Per layout, `adpipe sync --mode full` (process wall, per-stage timings, CPU seconds)
against ClickHouse's own INSERT … SELECT FROM postgresql() into the same schema, in a child process of its own
on the same fresh engine. The ratios: adpipe's process wall against the pull alone (the target's measure, the
strictest), adpipe's whole run in its process against the pull, and, for reference, process against process (the
pull's child also imports, opens the engine and creates the schema).

Default run:

Same run, same data (default 5M impressions + 500k clicks in the embedded Postgres):
  adpipe   `adpipe sync --mode full` in a subprocess (end to end, incl. Parquet snapshots), its peak RSS
  (a)      ClickHouse pulling directly: INSERT … SELECT FROM postgresql(…) (no snapshots, no validation),
           into the warehouse schema (aggregates filled by the views) and (a0) into bare tables
  (b)      naive: psycopg fetchall + clickhouse-connect inserts of Python rows in batches, over the same rows
           (or, with --naive-rows N, the first N impressions, extrapolated)
then an incremental sync of 10k new impressions over the existing rows.
The data is generated once and kept in --home, so reruns skip the generation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PER_ROW_SLICE = 2_000


def main() -> None:
    if sys.argv[1:2] == ["layouts"]:
        return layouts(sys.argv[2:])
    if sys.argv[1:2] == ["direct-pull"]:
        return print(json.dumps(_direct_pull_child(sys.argv[2])))
    parser = argparse.ArgumentParser()
    parser.add_argument("--campaigns", type=int, default=500)
    parser.add_argument("--impressions-per-campaign", type=int, default=10_000)
    parser.add_argument("--home", type=Path, default=Path("/tmp/adpipe-bench"))
    parser.add_argument("--naive-rows", type=int, default=None, help="run (b) on the first N impressions only")
    args = parser.parse_args()

    os.environ["ADPIPE_HOME"] = str(args.home)
    os.environ["ADPIPE_STAGING_DIR"] = str(args.home / "staging")
    os.environ.pop("ADPIPE_POSTGRES_URL", None)
    os.environ.pop("ADPIPE_CLICKHOUSE_URL", None)
    from pipeline.config import load_settings
    from pipeline.source.postgres import connect, postgres_url

    settings = load_settings()
    expected = args.campaigns * args.impressions_per_campaign
    with connect(settings) as pg:
        pg.autocommit = True
        _ensure_data(pg, args.campaigns, args.impressions_per_campaign)
        impressions, clicks = (pg.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("impressions", "clicks"))
    assert impressions == expected, (impressions, expected)
    total_rows = impressions + clicks
    print(f"source: {impressions:,} impressions + {clicks:,} clicks = {total_rows:,} rows")

    adpipe_seconds, adpipe_rss, summary = _adpipe_sync(["--mode", "full"])
    print(
        f"adpipe full sync       : {adpipe_seconds:7.2f} s wall (process)  {total_rows / adpipe_seconds:12,.0f} rows/s"
        f"  peak RSS {adpipe_rss / 1024:,.0f} MiB"
    )
    print(f"   stages (in-process) : {json.dumps(summary['timings_s'])}")
    sync_seconds = summary["timings_s"]["sync"]

    url = postgres_url(settings)
    direct_seconds, _ = _clickhouse_pulls_directly(settings, url, with_aggregates=True)
    bare_seconds, _ = _clickhouse_pulls_directly(settings, url, with_aggregates=False)
    naive_rows, naive_rate = _naive(settings, args.naive_rows)
    per_row_rate = _naive_per_row(settings)
    print(
        f"(a) CH postgresql()    : {direct_seconds:7.2f} s  {total_rows / direct_seconds:12,.0f} rows/s"
        "  (into the warehouse schema: the views fill the aggregates, as for adpipe)"
    )
    print(f"(a0) same, bare tables : {bare_seconds:7.2f} s  {total_rows / bare_seconds:12,.0f} rows/s  (no aggregates)")
    print(
        f"(b) naive rows         : {naive_rows:,} rows measured  {naive_rate:12,.0f} rows/s"
        f"  ({total_rows / naive_rate:,.0f} s for all rows)"
    )
    print(
        f"ratio adpipe (in-process, timings_s.sync: {sync_seconds:.2f} s) vs (a): {direct_seconds / sync_seconds:.2f}x;"
        f" process wall vs (a): {direct_seconds / adpipe_seconds:.2f}x;"
        f" in-process vs (a0): {bare_seconds / sync_seconds:.2f}x"
    )
    print(f"(b') one INSERT per row: {PER_ROW_SLICE:,} rows measured  {per_row_rate:12,.0f} rows/s")
    print(
        f"ratio adpipe (process wall) vs (b): {(total_rows / adpipe_seconds) / naive_rate:.1f}x;"
        f" vs (b'): {(total_rows / adpipe_seconds) / per_row_rate:,.0f}x"
    )

    from pipeline.warehouse import client as clickhouse

    clickhouse.close_all()  # chDB serves one process at a time: hand it back to the child
    for attempt in ("right after the full load", "steady state"):
        subprocess.run(
            [sys.executable, "-m", "pipeline", "impressions", "--campaign-id", "1", "--count", "10000"],
            check=True,
            capture_output=True,
        )
        inc_seconds, _, inc_summary = _adpipe_sync(["--mode", "incremental"])
        print(
            f"incremental, 10k new over {total_rows:,} [{attempt}]: sync {inc_summary['timings_s']['total']:.2f} s"
            f" (process wall incl. start-up {inc_seconds:.2f} s); loaded "
            f"{inc_summary['tables']['impressions']['loaded']:,} impressions"
        )


def _ensure_data(pg: object, campaigns: int, per_campaign: int) -> None:
    from pipeline.source.generate import Generator, reset

    # Earlier runs of this bench appended rows for the incremental step: drop them, keep the base data.
    pg.execute(
        "DELETE FROM impressions WHERE id > (SELECT min(id) - 1 FROM impressions) + %s", (campaigns * per_campaign,)
    )
    have = pg.execute("SELECT count(*) FROM impressions").fetchone()[0]
    if have == campaigns * per_campaign:
        return
    print(f"generating {campaigns * per_campaign:,} impressions (once)…", flush=True)
    reset(pg)
    Generator(pg, seed=42).batch(
        advertisers=max(campaigns // 10, 1), campaigns=min(campaigns, 10), impressions=per_campaign, ctr=0.1
    )
    # Vacuumed before anything is timed, as the layouts' copies are: a freshly written table makes its first reader
    # pay for its hint bits, and the autovacuum that starts on it competes with the sync (docs/performance.md).
    pg.commit()
    autocommit, pg.autocommit = pg.autocommit, True
    for table in ("impressions", "clicks"):
        pg.execute(f"VACUUM ANALYZE {table}")
    pg.autocommit = autocommit


def _adpipe_sync(options: list[str]) -> tuple[float, int, dict]:
    """Run `adpipe sync` in a child process; wall time, its peak RSS (KiB) and its --json summary."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "sync", *options, "--json"], check=True, capture_output=True, text=True
    )
    seconds = time.perf_counter() - began
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(rss, before), json.loads(done.stdout)


def _clickhouse_pulls_directly(settings: object, url: str, *, with_aggregates: bool) -> tuple[float, int]:
    """INSERT … SELECT FROM postgresql(…) per fact table, into a scratch database: (seconds, rows moved).

    With aggregates, the scratch database has the warehouse schema, so the materialized views fill
    campaign_daily/hourly as they do for adpipe: the same end state. Without, bare copies of the tables.
    The schema is created before the clock starts: only the pull is timed.
    """
    from urllib.parse import urlsplit

    from pipeline.warehouse import client as clickhouse
    from pipeline.warehouse.schema import apply_schema

    client = clickhouse.connect(settings)
    home_database = client.database
    client.command("DROP DATABASE IF EXISTS bench_direct SYNC")
    client.command("CREATE DATABASE bench_direct")
    client.database = "bench_direct"
    if with_aggregates:
        apply_schema(client)
    else:
        for table in ("impressions", "clicks"):
            client.command(f"CREATE TABLE {table} AS {home_database}.{table}")
    parts = urlsplit(url)
    database = parts.path.lstrip("/") or "postgres"
    began = time.perf_counter()
    for table in ("impressions", "clicks"):
        client.command(
            f"INSERT INTO {table} SELECT id, campaign_id, created_at "
            f"FROM postgresql('{parts.hostname}:{parts.port}', '{database}', '{table}', 'postgres', '')"
        )
    seconds = time.perf_counter() - began
    rows = sum(client.command(f"SELECT count() FROM {table}") for table in ("impressions", "clicks"))
    client.database = home_database
    client.command("DROP DATABASE bench_direct SYNC")
    return seconds, rows


def _naive(settings: object, limit: int | None) -> tuple[int, float]:
    """psycopg fetchall, then clickhouse-connect inserts of Python rows: what a first script does.

    Over both fact tables, or the first `limit` impressions. Returns (rows, rows/s)."""
    from pipeline.source.postgres import connect
    from pipeline.warehouse import client as clickhouse

    client = clickhouse.connect(settings)
    tables = ("impressions",) if limit else ("impressions", "clicks")
    for table in tables:
        client.command(f"DROP TABLE IF EXISTS bench_naive_{table}")
        client.command(f"CREATE TABLE bench_naive_{table} AS {table}")
    moved = 0
    began = time.perf_counter()
    for table in tables:
        with connect(settings) as pg:
            query = f"SELECT id, campaign_id, created_at FROM {table} ORDER BY id"
            rows = pg.execute(query + (f" LIMIT {limit}" if limit else "")).fetchall()
        for start in range(0, len(rows), 10_000):
            client.insert(
                f"bench_naive_{table}", rows[start : start + 10_000], column_names=["id", "campaign_id", "created_at"]
            )
        moved += len(rows)
        del rows
    seconds = time.perf_counter() - began
    for table in tables:
        client.command(f"DROP TABLE bench_naive_{table}")
    return moved, moved / seconds


def _naive_per_row(settings: object) -> float:
    """The most literal naive loader: one INSERT statement per fetched row."""
    from pipeline.source.postgres import connect
    from pipeline.warehouse import client as clickhouse

    client = clickhouse.connect(settings)
    client.command("DROP TABLE IF EXISTS bench_naive")
    client.command("CREATE TABLE bench_naive AS impressions")
    began = time.perf_counter()
    with connect(settings) as pg:
        rows = pg.execute(
            f"SELECT id, campaign_id, created_at FROM impressions ORDER BY id LIMIT {PER_ROW_SLICE}"
        ).fetchall()
    for row_id, campaign_id, created_at in rows:
        client.command(
            "INSERT INTO bench_naive VALUES ({id:UInt64}, {campaign:UInt32}, {at:DateTime64(6)})",
            parameters={"id": row_id, "campaign": campaign_id, "at": created_at},
        )
    seconds = time.perf_counter() - began
    client.command("DROP TABLE bench_naive")
    return len(rows) / seconds


LAYOUTS = {
    "dense": "id",
    "jump": "CASE WHEN id > {half} THEN id + 2000000000 - {half} ELSE id END",
    "random": "id * 3 - (hashint4(id) & 1) - ((hashint4(id) >> 1) & 1)",
}
"""Each layout's ids as a function of the dense id: an order-preserving map (so rows stay in the same order)."""


def layouts(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_sync.py layouts")
    parser.add_argument("--campaigns", type=int, default=300)
    parser.add_argument("--impressions-per-campaign", type=int, default=11_000)
    parser.add_argument("--home", type=Path, default=Path("/tmp/adpipe-bench-layouts"))
    parser.add_argument("--only", default=",".join(LAYOUTS), help="comma-separated layouts to run")
    parser.add_argument("--sync-args", default="", help="extra `adpipe sync` options, e.g. '--partitions 1'")
    parser.add_argument("--rounds", type=int, default=3, help="each round runs every layout once, in turn")
    args = parser.parse_args(argv)
    server = _layout_sources(args.home, args.campaigns, args.impressions_per_campaign)
    results: dict[str, list[tuple[float, float, float]]] = {}
    chosen = args.only.split(",")
    # Each round starts one layout further on, so that none is always first (after the pull of the round before).
    order = [chosen[(number + i) % len(chosen)] for number in range(args.rounds) for i in range(len(chosen))]
    for layout in order:
        home = args.home / f"run-{layout}"
        subprocess.run(["rm", "-rf", str(home)], check=True)
        env = {
            **os.environ,
            "ADPIPE_HOME": str(home),
            "ADPIPE_STAGING_DIR": str(home / "staging"),
            "ADPIPE_POSTGRES_URL": f"{server}/bench_{layout}",
        }
        env.pop("ADPIPE_CLICKHOUSE_URL", None)
        pg_before = _postgres_cpu(args.home)
        seconds, cpu, summary = _timed_child(
            [sys.executable, "-m", "pipeline", "sync", "--mode", "full", "--json", *args.sync_args.split()], env
        )
        pg_cpu = _postgres_cpu(args.home) - pg_before
        pull_began = time.perf_counter()
        pulled = subprocess.run(
            [sys.executable, __file__, "direct-pull", f"{server}/bench_{layout}"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        direct_process = time.perf_counter() - pull_began
        direct = json.loads(pulled.stdout)
        direct_pg_cpu = _postgres_cpu(args.home) - pg_before - pg_cpu
        rows = sum(summary["tables"][table]["loaded"] for table in ("impressions", "clicks"))
        assert rows == direct["rows"], (layout, rows, direct)
        in_sync = summary["timings_s"]["sync"]
        results.setdefault(layout, []).append((seconds, in_sync, direct["seconds"], direct_process))
        print(
            f"{layout:6}: adpipe full sync {seconds:6.2f} s process wall ({in_sync:.2f} s in"
            f" sync; CPU s: adpipe {cpu:.2f}, Postgres {pg_cpu:.2f})  postgresql() {direct['seconds']:.2f} s"
            f" (CPU s: its process {direct['cpu']:.2f}, Postgres {direct_pg_cpu:.2f};"
            f" its whole process {direct_process:.2f} s)"
            f"  ratio process wall {direct['seconds'] / seconds:.2f}x, in-process"
            f" {direct['seconds'] / in_sync:.2f}x, process vs process {direct_process / seconds:.2f}x  ({rows:,} rows)"
        )
        print(f"        stages: {json.dumps(summary['timings_s'])}")
    medians = {}
    for layout, runs in results.items():
        medians[layout] = [statistics.median(column) for column in zip(*runs, strict=True)]
    for layout, (wall, in_sync, direct, direct_process) in medians.items():
        print(
            f"median {layout:6}: process wall {wall:.2f} s, in sync {in_sync:.2f} s, postgresql() {direct:.2f} s"
            f" (its whole process {direct_process:.2f} s): ratio process wall {direct / wall:.2f}x, in-process"
            f" {direct / in_sync:.2f}x, process vs process {direct_process / wall:.2f}x"
        )
    fastest = min(wall for wall, *_ in medians.values())
    print(
        "spread of the median process wall vs the fastest layout: "
        + ", ".join(f"{layout} {wall / fastest:.2f}x" for layout, (wall, *_) in medians.items())
    )


def _timed_child(command: list[str], env: dict[str, str]) -> tuple[float, float, dict]:
    """Run a child; its wall time, its CPU seconds (user + system) and its JSON output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, json.loads(done.stdout)


def _postgres_cpu(home: Path) -> float:
    """CPU seconds used so far by the embedded Postgres under `home`: the postmaster, the backends it has reaped
    (their time is added to its children's), and those still running."""
    ticks = os.sysconf("SC_CLK_TCK")
    postmaster = int((home / "postgres" / "postmaster.pid").read_text().split()[0])
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def _layout_sources(home: Path, campaigns: int, per_campaign: int) -> str:
    """One database per layout on the embedded server (generated once, kept in `home`); the server's URL."""
    import psycopg

    from pipeline.config import load_settings
    from pipeline.source.postgres import connect, postgres_url

    os.environ["ADPIPE_HOME"] = str(home)
    os.environ.pop("ADPIPE_POSTGRES_URL", None)
    server = postgres_url(load_settings()).rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        have = {row[0] for row in admin.execute("SELECT datname FROM pg_database").fetchall()}
        if "bench_dense" not in have:
            print(f"generating {campaigns * per_campaign:,} impressions (once)…", flush=True)
            admin.execute("CREATE DATABASE bench_dense")
            os.environ["ADPIPE_POSTGRES_URL"] = f"{server}/bench_dense"
            with connect(load_settings()) as pg:
                _ensure_data(pg, campaigns, per_campaign)
            os.environ.pop("ADPIPE_POSTGRES_URL")
        with psycopg.connect(f"{server}/bench_dense", autocommit=True) as pg:
            if _written_by_generator(pg):
                _rewrite_in_id_order(pg, LAYOUTS["dense"])
        for layout, expression in LAYOUTS.items():
            if layout == "dense" or f"bench_{layout}" in have:
                continue
            admin.execute(f"CREATE DATABASE bench_{layout} TEMPLATE bench_dense")
            with psycopg.connect(f"{server}/bench_{layout}", autocommit=True) as pg:
                _rewrite_in_id_order(pg, expression)
    return server


def _written_by_generator(pg: object) -> bool:
    """Whether the dense layout's tables are still as the generator wrote them (their ids drawn from a sequence)."""
    return pg.execute(
        "SELECT column_default IS NOT NULL FROM information_schema.columns"
        " WHERE table_name = 'impressions' AND column_name = 'id'"
    ).fetchone()[0]


def _rewrite_in_id_order(pg: object, expression: str) -> None:
    """Each fact table written again in id order with its ids mapped by `expression`, as a source written that way
    would be laid out. Every layout, the dense one too, so that the three differ in their ids only: the generator's
    own table can hold more pages than its rows fill, which the dense layout's syncs would read on top of the rows
    (docs/performance.md, Id layouts)."""
    for table in ("impressions", "clicks"):
        half = pg.execute(f"SELECT max(id) / 2 FROM {table}").fetchone()[0]
        ids = expression.format(half=half)
        pg.execute(f"CREATE TABLE {table}_new AS SELECT {ids} AS id, campaign_id, created_at FROM {table} ORDER BY id")
        pg.execute(f"DROP TABLE {table}")
        pg.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
        pg.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
        pg.execute(f"VACUUM ANALYZE {table}")


def _direct_pull_child(url: str) -> dict:
    """In a fresh process on the layout's engine: ClickHouse's postgresql() into the warehouse schema, timed."""
    from pipeline.config import load_settings

    began = time.process_time()
    seconds, rows = _clickhouse_pulls_directly(load_settings(), url, with_aggregates=True)
    return {"seconds": seconds, "rows": rows, "cpu": time.process_time() - began}


if __name__ == "__main__":
    main()
