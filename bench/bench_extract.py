"""Postgres → Arrow read speed of the two extract engines, in the same run, on the same table.

    uv run python bench/bench_extract.py [--home /tmp/adpipe-bench] [--chunk-rows 1000000] [--repeat 3]

Reads every impression the way the sync does (id-range chunks inside one exported snapshot):
ConnectorX with 1 and 2 parallel partitions per chunk, and ADBC. Run bench_sync.py first (it
generates the data in --home). Prints the best of --repeat runs, rows/s and ratios.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, default=Path("/tmp/adpipe-bench"))
    parser.add_argument("--chunk-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ["ADPIPE_HOME"] = str(args.home)
    os.environ.pop("ADPIPE_POSTGRES_URL", None)

    from pipeline.config import load_settings
    from pipeline.options import Engine
    from pipeline.sync.extract import SourceReader

    settings = load_settings()
    variants = {
        "connectorx, 1 partition": (Engine.CONNECTORX, 1),
        "connectorx, 2 partitions": (Engine.CONNECTORX, 2),
        "adbc, 1 partition": (Engine.ADBC, 1),
        "adbc, 2 partitions": (Engine.ADBC, 2),
    }
    best: dict[str, float] = {}
    rows = 0
    for _ in range(args.repeat):
        for name, (engine, partitions) in variants.items():
            with SourceReader(settings, engine, partitions) as reader:
                began = time.perf_counter()
                rows = sum(
                    t.num_rows
                    for _, _, t in reader.read_id_range("impressions", 0, reader.max_id("impressions"), args.chunk_rows)
                )
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - began)
    baseline = best["connectorx, 2 partitions"]
    print(f"{rows:,} impressions, chunks of {args.chunk_rows:,} ids, best of {args.repeat}")
    for name, seconds in best.items():
        print(
            f"  {name:26s} {seconds:6.2f} s  {rows / seconds:12,.0f} rows/s  {baseline / seconds:5.2f}x vs connectorx×2"
        )


if __name__ == "__main__":
    main()
