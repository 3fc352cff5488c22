"""Change capture: an incremental sync of fact updates and deletes, side by side with the full reload it replaces.

    uv run python bench/bench_capture.py [--impressions 10000000] [--updates 10000] [--deletes 10000] [--rounds 3]
                                         [--consecutive] [--compare DIR]

Once: 500 campaigns, `--impressions` impressions and a click per 20 impressions in the embedded Postgres of
--home (kept for reruns, written again once earlier rounds have deleted more than 1%), then `adpipe sync --mode
full`. Each round then, in the source: `--updates` impressions moved to another campaign and a day later, and
`--deletes` impressions deleted, in one transaction. Then, measured:
  decode   the slot read and decoded alone (pg_logical_slot_peek_binary_changes + our pgoutput decoder)
  adpipe   `adpipe sync --json` in a subprocess: process wall, the sync's own time (`timings_s.total`, up to
           its commit, plus `settle`: its deletes folded in beside the slot's advance) and its stages
  full     `adpipe sync --mode full` in a subprocess: what a user without change capture would run instead
and last, `adpipe reconcile` must pass (every KPI and row count against Postgres and the snapshots).

Each round's full re-sync leaves the next round a warehouse freshly loaded. With `--consecutive`, the rounds follow
each other with no full re-sync between them, as a warehouse that only ever syncs incrementally sees them (the
deletes' patch parts add up until merges fold them in); the full re-sync is timed once, at the end.

When it writes the data, one untimed round follows the first full sync: its slot read walks the WAL of the rows
just written (which publish nothing), a one-time cost after a bulk load that the rounds would otherwise meet first.

With `--compare DIR` (another checkout, e.g. `git worktree add /tmp/before <rev>`), each round runs the incremental
sync twice, once by this code and once by DIR's, each after a `_change` of its own, in alternating order, so that the
machine's drift falls on both alike; the report gives each its medians. The child runs with DIR as its working
directory: `python -m` puts the working directory first on sys.path, so PYTHONPATH alone would run this code twice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impressions", type=int, default=10_000_000)
    parser.add_argument("--updates", type=int, default=10_000)
    parser.add_argument("--deletes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--home", type=Path, default=Path("/tmp/adpipe-bench-capture"))
    parser.add_argument("--consecutive", action="store_true", help="no full re-sync between the rounds")
    parser.add_argument("--compare", type=Path, help="another adpipe checkout, run beside this one in each round")
    args = parser.parse_args()
    os.environ["ADPIPE_HOME"] = str(args.home)
    os.environ["ADPIPE_STAGING_DIR"] = str(args.home / "staging")
    for name in ("ADPIPE_POSTGRES_URL", "ADPIPE_CLICKHOUSE_URL", "ADPIPE_CHANGE_CAPTURE"):
        os.environ.pop(name, None)
    from pipeline.config import load_settings
    from pipeline.source.postgres import connect

    settings = load_settings()
    with connect(settings) as pg:
        pg.autocommit = True
        written = _ensure_data(pg, args.impressions)
        # Earlier runs' rounds left dead rows behind (too few for autovacuum): each run starts from a vacuumed source.
        pg.execute("VACUUM ANALYZE impressions, clicks")
        if written or not (args.home / "last_synced_ids.json").exists():
            print("first full sync …", flush=True)
            _adpipe("sync", "--mode", "full")
            # The slot walks the WAL of the rows just written once, at the next read (11-12 s of decoding for 10M
            # rows, which publish nothing): a one-time cost after a bulk load, not what a round measures.
            _change(pg, args.updates, args.deletes)
            wall, _ = _timed_sync("sync", "--json")
            print(f"warm-up round, which decodes the WAL of the data just written: {wall:.2f} s, not counted")
        checkouts = [None] if args.compare is None else [None, args.compare]
        rows: dict[Path | None, list[dict]] = {checkout: [] for checkout in checkouts}
        for number in range(args.rounds):
            for checkout in checkouts if number % 2 == 0 else checkouts[::-1]:
                _change(pg, args.updates, args.deletes)
                decoded, decode_seconds = _decode(pg, settings)
                wall, result = _timed_sync("sync", "--json", checkout=checkout)
                full_wall = None if args.consecutive else _timed_sync("sync", "--mode", "full", "--json")[0]
                rows[checkout].append(
                    {
                        "decoded": decoded,
                        "decode_s": decode_seconds,
                        "wall_s": wall,
                        "sync_s": result["timings_s"]["total"] + result["timings_s"].get("settle", 0.0),
                        "fact_changes_s": result["timings_s"].get("fact_changes", 0.0),
                        "retracted": sum(t.get("retracted", 0) for t in result["tables"].values()),
                        "full_wall_s": full_wall,
                    }
                )
                print(
                    json.dumps({"code": str(checkout or "this"), **rows[checkout][-1], "timings": result["timings_s"]}),
                    flush=True,
                )
        if args.consecutive:
            full_wall = _timed_sync("sync", "--mode", "full", "--json")[0]
            for row in (row for runs in rows.values() for row in runs):
                row["full_wall_s"] = full_wall
    reconciled = subprocess.run([sys.executable, "-m", "pipeline", "reconcile"], capture_output=True, text=True)
    for checkout, runs in rows.items():
        _report(args, runs, reconciled.returncode == 0, "this code" if checkout is None else f"the code in {checkout}")


def _ensure_data(pg: object, impressions: int) -> bool:
    """500 campaigns, `impressions` impressions over November 2026 and a click per 20, written by SQL (fast); written
    again once the rounds of earlier runs have deleted more than 1% of them, so the figures stay "over N facts"."""
    have = pg.execute("SELECT count(*) FROM impressions").fetchone()[0]
    if impressions * 0.99 <= have <= impressions and pg.execute("SELECT count(*) FROM clicks").fetchone()[0]:
        return False
    print(f"writing {impressions:,} impressions …", flush=True)
    pg.execute("TRUNCATE clicks, impressions, campaign, advertiser RESTART IDENTITY")
    pg.execute("INSERT INTO advertiser (name) SELECT 'advertiser ' || n FROM generate_series(1, 50) AS n")
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id)"
        " SELECT 'campaign ' || n, 1.00, 1000.00, '2026-11-01', '2026-11-30', 1 + n % 50"
        " FROM generate_series(1, 500) AS n"
    )
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at)"
        " SELECT 1 + n %% 500, timestamp '2026-11-01' + n * interval '0.25 second'"
        " FROM generate_series(1, %s) AS n",
        (impressions,),
    )
    pg.execute(  # a click 30 s after every impression of one block of 500 ids in 20: 5% CTR in every campaign
        "INSERT INTO clicks (campaign_id, created_at) SELECT campaign_id, created_at + interval '30 second'"
        " FROM impressions WHERE (id / 500) % 20 = 0"
    )
    pg.execute("VACUUM ANALYZE impressions, clicks")
    return True


def _change(pg: object, updates: int, deletes: int) -> None:
    """One transaction: `updates` random impressions to another campaign, a day later; `deletes` others deleted.

    Unseeded: a fixed seed would pick the ids of the same round of an earlier run, already deleted."""
    high = pg.execute("SELECT max(id) FROM impressions").fetchone()[0]
    with pg.transaction():
        pg.execute(
            "UPDATE impressions SET campaign_id = 1 + (campaign_id + 7) %% 500,"
            " created_at = created_at + interval '1 day'"
            " WHERE id IN (SELECT 1 + floor(random() * %s)::bigint FROM generate_series(1, %s))",
            (high, updates),
        )
        pg.execute(
            "DELETE FROM impressions WHERE id IN (SELECT 1 + floor(random() * %s)::bigint FROM generate_series(1, %s))",
            (high, deletes),
        )


def _decode(pg: object, settings: object) -> tuple[int, float]:
    from pipeline.source.capture import peek_transactions
    from pipeline.sync.capture import warehouse_slot

    began = time.perf_counter()
    slot = warehouse_slot(settings, pg.info.dbname)
    changes = sum(len(ids) for transaction in peek_transactions(pg, slot) for ids in transaction.changed.values())
    return changes, time.perf_counter() - began


def _timed_sync(*args: str, checkout: Path | None = None) -> tuple[float, dict]:
    began = time.perf_counter()
    done = _adpipe(*args, checkout=checkout)
    return time.perf_counter() - began, json.loads(done.stdout)


def _adpipe(*args: str, checkout: Path | None = None) -> subprocess.CompletedProcess:
    """`adpipe ARGS` in a child process, by this code or by the checkout's (run in it: see the module's docstring)."""
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=checkout)
    if done.returncode != 0:
        sys.exit(f"adpipe {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _report(args: argparse.Namespace, rows: list[dict], reconciled: bool, code: str) -> None:
    def median(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    decoded = median("decoded")
    order = "one after the other, no full re-sync between" if args.consecutive else "each after a full re-sync"
    print(
        f"\n{code}: {args.impressions:,} impressions; per round {args.updates:,} updates + {args.deletes:,} deletes"
        f" ({len(rows)} rounds, {order})"
    )
    print(f"{'':34}{'median':>10}{'min':>10}{'max':>10}")
    for label, key in (
        ("slot read + decode (s)", "decode_s"),
        ("adpipe sync, process wall (s)", "wall_s"),
        ("adpipe sync, its own time (s)", "sync_s"),
        ("  of which fact changes (s)", "fact_changes_s"),
        ("full re-sync, process wall (s)", "full_wall_s"),
    ):
        values = [row[key] for row in rows]
        print(f"{label:34}{median(key):>10.2f}{min(values):>10.2f}{max(values):>10.2f}")
    print(f"changed ids decoded per second: {decoded / median('decode_s'):,.0f}")
    print(f"incremental / full re-sync (process wall): {median('wall_s') / median('full_wall_s'):.2f}×")
    print(f"reconcile afterwards: {'passed' if reconciled else 'FAILED'}")


if __name__ == "__main__":
    main()
