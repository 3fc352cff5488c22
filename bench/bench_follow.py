"""Freshness under a steady write load: `adpipe sync --follow` side by side with a loop of one-shot `adpipe sync`.

    uv run python bench/bench_follow.py [--rate 2000] [--seconds 60] [--interval 5]

For each contender, from a fresh --home (embedded Postgres and chDB): a small seed and a full sync, then a writer
commits `--rate` rows a second (impressions, and a click per 10) in batches every 100 ms for `--seconds`, while
  follow   `adpipe sync --follow --interval N` runs in one process
  loop     `adpipe sync` runs every N seconds in a new process, as cron or a systemd timer would
After the load, the syncs catch up and stop, and `adpipe reconcile` must pass.

Freshness of a row: from the moment its commit returned to the writer until the end of the first successful run
whose rows include its id (`sync_runs`: `finished_at`, `max_id`); the run loads the warehouse, so its KPIs count
the row by then. One writer, so ids grow in commit order. Reported: p50, p95 and max against the target
interval + 2 s, runs, and the CPU seconds the sync process(es) used.
"""

from __future__ import annotations

import argparse
import bisect
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

BATCH_SECONDS = 0.1


@dataclass
class Outcome:
    name: str
    freshness: list[float]
    runs: int
    cpu_seconds: float
    reconciled: bool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=2000, help="rows committed per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--home", type=Path, default=Path("/tmp/adpipe-bench-follow"))
    args = parser.parse_args()
    outcomes = [_contender(name, args) for name in ("follow", "loop")]
    _report(args, outcomes)


def _contender(name: str, args: argparse.Namespace) -> Outcome:
    home = args.home / name
    shutil.rmtree(home, ignore_errors=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("ADPIPE_")}
    env |= {"ADPIPE_HOME": str(home), "ADPIPE_STAGING_DIR": str(home / "staging")}
    os.environ.clear()
    os.environ.update(env)
    from pipeline.config import load_settings
    from pipeline.source.postgres import EmbeddedPostgres, connect

    settings = load_settings()
    with connect(settings) as pg:
        pg.autocommit = True
        _seed(pg)
        _adpipe(env, "sync", "--mode", "full")
        print(f"{name}: writing {args.rate:,} rows/s for {args.seconds:g} s …", flush=True)
        commits: list[tuple[str, int, float]] = []
        stop = threading.Event()
        failed: list[BaseException] = []
        writer = threading.Thread(target=_write, args=(settings, args.rate, stop, commits, failed))
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        syncing = _follow(env, args.interval) if name == "follow" else _loop(env, args.interval)
        writer.start()
        time.sleep(args.seconds)
        stop.set()
        writer.join()
        if failed:
            syncing.stop()
            sys.exit(f"the writer failed: {failed[0]}")
        _catch_up(pg, settings, commits)
        syncing.stop()
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        reconciled = subprocess.run([sys.executable, "-m", "pipeline", "reconcile"], env=env, capture_output=True)
        freshness, runs = _freshness(settings, commits)
    EmbeddedPostgres(settings.embedded_postgres_dir).stop()
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    return Outcome(name, freshness, runs, cpu, reconciled.returncode == 0)


def _seed(pg: object) -> None:
    pg.execute("INSERT INTO advertiser (name) SELECT 'advertiser ' || n FROM generate_series(1, 10) AS n")
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id)"
        " SELECT 'campaign ' || n, 1.00, 1000.00, '2026-11-01', '2026-12-31', 1 + n % 10"
        " FROM generate_series(1, 100) AS n"
    )


def _write(
    settings: object,
    rate: int,
    stop: threading.Event,
    commits: list[tuple[str, int, float]],
    failed: list[BaseException],
) -> None:
    """Commit rate × 100 ms rows every 100 ms: impressions, and a click per 10; note each batch's max id and when
    its commit returned. An error is kept in `failed` for the main thread."""
    try:
        _write_batches(settings, rate, stop, commits)
    except BaseException as exc:
        failed.append(exc)


def _write_batches(settings: object, rate: int, stop: threading.Event, commits: list[tuple[str, int, float]]) -> None:
    from pipeline.source.postgres import connect

    per_batch = max(1, round(rate * BATCH_SECONDS))
    clicks = max(1, per_batch // 11)
    impressions = per_batch - clicks
    with connect(settings) as pg:
        pg.autocommit = True
        deadline = time.monotonic()
        while not stop.is_set():
            for table, count in (("impressions", impressions), ("clicks", clicks)):
                row = pg.execute(
                    f"WITH written AS (INSERT INTO {table} (campaign_id, created_at)"
                    " SELECT 1 + n %% 100, now() FROM generate_series(1, %s) AS n RETURNING id)"
                    " SELECT max(id) FROM written",
                    (count,),
                ).fetchone()
                commits.append((table, row[0], time.time()))
            deadline += BATCH_SECONDS
            time.sleep(max(0.0, deadline - time.monotonic()))


def _catch_up(pg: object, settings: object, commits: list[tuple[str, int, float]]) -> None:
    """Wait until the state file says the last rows written are synced (so every row gets its freshness)."""
    from pipeline.sync.state import load_state

    last = {table: max_id for table, max_id, _ in commits}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        facts = load_state(settings.home).facts
        if all(table in facts and facts[table].high_water >= max_id for table, max_id in last.items()):
            return
        time.sleep(0.2)
    sys.exit("the sync did not catch up within 120 s after the load")


def _freshness(settings: object, commits: list[tuple[str, int, float]]) -> tuple[list[float], int]:
    """Per committed batch: seconds from its commit to the end of the first successful run holding its max id."""
    from pipeline.warehouse import client as clickhouse

    client = clickhouse.connect(settings)
    rows = client.query(
        "SELECT table_name, max_id, finished_at FROM sync_runs FINAL"
        " WHERE status = 'success' AND mode = 'incremental' AND max_id IS NOT NULL ORDER BY finished_at"
    ).result_rows
    runs = len({row[2] for row in rows})
    covered: dict[str, tuple[list[int], list[float]]] = {}
    for table, max_id, finished in rows:
        ids, times = covered.setdefault(table, ([], []))
        if not ids or max_id > ids[-1]:
            ids.append(max_id)
            times.append(finished.replace(tzinfo=UTC).timestamp())
    clickhouse.close_all()
    freshness = []
    for table, max_id, committed in commits:
        ids, times = covered[table]
        freshness.append(times[bisect.bisect_left(ids, max_id)] - committed)
    return freshness, runs


class _Syncing:
    def __init__(self, stop: threading.Event, process: subprocess.Popen | None, thread: threading.Thread | None):
        self._stop, self._process, self._thread = stop, process, thread

    def stop(self) -> None:
        self._stop.set()
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)
            if self._process.wait(timeout=120) != 0:
                sys.exit(f"the follower exited {self._process.returncode}")
        if self._thread is not None:
            self._thread.join()


def _follow(env: dict[str, str], interval: float) -> _Syncing:
    command = [sys.executable, "-m", "pipeline", "sync", "--follow", "--interval", f"{interval}s"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    return _Syncing(threading.Event(), process, None)


def _loop(env: dict[str, str], interval: float) -> _Syncing:
    """A new `adpipe sync` every `interval` seconds from the start of the last, as a timer would start them."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            began = time.monotonic()
            _adpipe(env, "sync")
            stop.wait(max(0.0, interval - (time.monotonic() - began)))

    thread = threading.Thread(target=run)
    thread.start()
    return _Syncing(stop, None, thread)


def _adpipe(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"adpipe {' '.join(args)} failed: {done.stderr.strip()}")


def _report(args: argparse.Namespace, outcomes: list[Outcome]) -> None:
    target = args.interval + 2
    print(f"\n{args.rate:,} rows/s for {args.seconds:g} s, interval {args.interval:g} s; target p95 < {target:g} s")
    print(f"{'':10}{'p50 (s)':>10}{'p95 (s)':>10}{'max (s)':>10}{'runs':>8}{'CPU (s)':>10}  reconcile")
    for outcome in outcomes:
        quantiles = statistics.quantiles(outcome.freshness, n=20)
        p50, p95 = statistics.median(outcome.freshness), quantiles[18]
        print(
            f"{outcome.name:10}{p50:>10.2f}{p95:>10.2f}{max(outcome.freshness):>10.2f}{outcome.runs:>8}"
            f"{outcome.cpu_seconds:>10.1f}  {'passed' if outcome.reconciled else 'FAILED'}"
        )


if __name__ == "__main__":
    main()
