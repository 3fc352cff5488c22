"""Named points where a test makes this process SIGKILL itself, to prove crash safety at exactly that point.

`ADPIPE_TEST_KILL_AT=<point>` kills at the first time the process reaches `<point>`; `<point>:<n>` at the n-th.
`ADPIPE_TEST_KILL_SIGNAL=SIGINT` sends that signal instead: Ctrl-C at exactly that point.
The variables are read once, at import: unset (always, outside the crash tests), `kill_point` is one comparison.
The points, in the order a sync reaches them:

- `staging-started`: the run is recorded as running and its staging directory is open; nothing is written.
- `part-written`: a part was written to staging (the n-th of this process).
- `published`: the run's manifest is written (its commit point in staging), before anything of it is loaded.
- `part-loaded`: a part was inserted into ClickHouse (the n-th of this process; a full run loads into its shadow).
- `retracted`: the versions a run retracted from a fact table were deleted; its new rows are not loaded yet.
- `loaded`: every part of the run is in ClickHouse; the state file is not yet committed.
- `committed`: the state file is committed; the change-capture slot is not advanced, `sync_runs` not written.
- `swap`: a full run's table exchange is under way (n tables exchanged).
- `events-chunk`: `events load` staged a chunk of a file (the n-th); more of the file is to come.
- `events-postgres-written`: `events load` committed the reports to Postgres, before its ClickHouse step.
"""

from __future__ import annotations

import os
import signal

_TARGET = os.environ.get("ADPIPE_TEST_KILL_AT") or None
_SIGNAL = signal.Signals[os.environ.get("ADPIPE_TEST_KILL_SIGNAL") or "SIGKILL"]
_reached: dict[str, int] = {}


def kill_point(name: str) -> None:
    """Signal this process if ADPIPE_TEST_KILL_AT names this point (and, with `:n`, this is its n-th time)."""
    if _TARGET is None:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if f"{name}:{_reached[name]}" == _TARGET or (name == _TARGET and _reached[name] == 1):
        os.kill(os.getpid(), _SIGNAL)
