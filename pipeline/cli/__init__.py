"""The `adpipe` command line. Each command parses its options and calls one library function.

Command modules register themselves on `app` when imported below.
"""

# `allocator` first: it configures Polars' allocator before any module imports Polars.
from pipeline.cli import allocator, demo, events, kpi, report, source, sync  # noqa: F401
from pipeline.cli.app import app


def main() -> None:
    app()
