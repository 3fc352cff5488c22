"""The `adpipe` command line. Each command parses its options and calls one library function.

Command modules register themselves on `app` when imported below.
"""

import logging
import os
import sys

# `allocator` first: it configures Polars' allocator before any module imports Polars.
from pipeline.cli import allocator, demo, events, kpi, report, source, sync  # noqa: F401
from pipeline.cli.app import app


def main() -> None:
    """The console script: run the command, then leave the process without tearing the interpreter down.

    By the time a command returns, everything it wrote is in place: the state renamed over the old one, staged
    parts checksummed, rows inserted into the warehouse. What interpreter shutdown would still do is collect the
    heap and stop the embedded engine, 0.2–0.35 s of every sync process (docs/performance.md), which changes
    nothing on disk: ClickHouse's parts and metadata are durable once written, as the kill tests show. So the
    warehouse is closed here, the output flushed, and the process ends.
    """
    try:
        app()
    except SystemExit as exit:
        code = _exit_code(exit)
    else:
        code = 0
    _leave(code)


def _exit_code(exit: SystemExit) -> int:
    if exit.code is None or isinstance(exit.code, int):
        return exit.code or 0
    print(exit.code, file=sys.stderr)  # what the interpreter would print for `sys.exit("message")`
    return 1


def _leave(code: int) -> None:
    warehouse = sys.modules.get("pipeline.warehouse.client")  # loaded only by commands that opened it
    if warehouse is not None:
        warehouse.close_all()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
