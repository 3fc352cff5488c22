"""The `adpipe` command line. Each command parses its options and calls one library function.

Command modules register themselves on `app` when imported below.
"""

import gc
import sys

# `allocator`, `openblas` and `interrupt` first: they configure Polars' allocator, NumPy's OpenBLAS and Ctrl-C
# before any module imports Polars or NumPy.
from pipeline.cli import allocator, interrupt, openblas  # noqa: F401

# isort: split
try:
    from pipeline.cli import demo, events, kpi, report, source, sync  # noqa: F401
    from pipeline.cli.app import app
except KeyboardInterrupt:
    # Ctrl-C while the commands are imported, before any command can report it: the same line and code as after.
    interrupt.clear_unhandled_mark()
    sys.stderr.write("error: interrupted\n")
    raise SystemExit(130) from None


def main() -> None:
    """The console script: one command, then the process ends.

    The cyclic garbage collector is off for the command. A sync's imports alone make some 90k objects that live as
    long as the process, and collecting while they are made cost 0.08–0.1 s of every sync process, for the few
    hundred objects in cycles a whole command leaves (591 in a full sync of 10M rows; docs/performance.md).
    Everything else is freed as usual, when its last reference goes. `sync --follow`, which runs for days, turns the
    collector back on.

    When the command is done, the objects it made are moved out of the garbage collector's reach: the interpreter's
    last collection would otherwise walk them all on the way out, 0.2–0.3 s of every sync process for memory the
    process gives back anyway (docs/performance.md). Shutdown runs as usual otherwise.

    Not once DuckDB is loaded (`reconcile`, `report`, `events load`): its bindings print a report of every object of
    theirs that is still alive at exit, some forty lines on stderr, and only that last collection frees them.
    """
    gc.disable()
    try:
        app()
    finally:
        if "duckdb" not in sys.modules:
            gc.freeze()
