"""The sync: Postgres → Polars → staged Parquet run → ClickHouse → committed state. The entry points: `sync`,
`replay`, `prune`, and `sync_locked` for a caller that holds the lock (the follower).

This module imports little on purpose. `sync_locked` starts opening the run's source (connecting, the snapshot, the
first chunks of the facts, the slot: `run_source`) and only then imports the run itself (`execute`: Polars, the
warehouse's client, chDB), so that a fresh process pays those imports while Postgres works (docs/performance.md).
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from pipeline.config import Settings
from pipeline.errors import AdpipeError
from pipeline.locks import exclusive_lock
from pipeline.options import Mode, Progress, SyncOptions
from pipeline.staging_home import check_staging
from pipeline.sync import capture
from pipeline.sync.run_source import OpeningSource, SourceOptions
from pipeline.sync.stage import list_runs, prune_runs, remove_interrupted
from pipeline.sync.state import SyncState, load_state

if TYPE_CHECKING:
    from pipeline.sync.runlog import SyncResult

log = logging.getLogger(__name__)


def sync(settings: Settings, options: SyncOptions) -> SyncResult:
    """Run one sync. Only one runs at a time per ADPIPE_HOME; a second one fails at once."""
    check_options(options)
    with sync_lock(settings):
        return sync_locked(settings, options)


def check_options(options: SyncOptions) -> None:
    if options.chunk_rows < 1:
        raise AdpipeError(f"--chunk-rows must be 1 or more, got {options.chunk_rows}")
    if options.partitions < 1:
        raise AdpipeError(f"--partitions must be 1 or more, got {options.partitions}")
    if options.keep is not None and options.keep < 1:
        raise AdpipeError(f"--keep must be 1 or more, got {options.keep}")


def sync_locked(settings: Settings, options: SyncOptions, *, schema_ready: bool = False) -> SyncResult:
    """One sync, by a caller that holds `sync_lock` (`sync`, and the follower for its whole life).

    `schema_ready`: this process already applied the schema to this warehouse, so the run skips it.

    The source opens on its own thread while the run's modules are imported and the warehouse opens
    (`pipeline.sync.run_source`), unless runs staged by an earlier sync are still to be loaded: their commit changes
    the state the run starts from, so they are loaded first.
    """
    began = time.perf_counter()
    check_staging(settings)  # an unreachable S3 staging fails here, before the warehouse is touched
    remove_interrupted(settings.staging_dir)
    state = load_state(settings.home)
    pending = list_runs(settings.staging_dir, after=state.last_run_id)
    warehouse = None
    if pending:
        from pipeline.sync import execute

        warehouse = execute.open_warehouse(settings, schema_ready)
        execute.recover_pending_runs(warehouse[0], settings, pending)
        state = load_state(settings.home)
    mode = _first_mode(options.mode, state)
    reading = SourceOptions(options.engine, options.partitions, options.chunk_rows)
    with OpeningSource(settings, reading, state, mode) as opening:
        from pipeline.sync import execute  # the run itself, imported while the source opens

        client, timings = warehouse or execute.open_warehouse(settings, schema_ready)
        result = execute.run_with_source(client, settings, options, mode, state, opening, [r.run_id for r in pending])
    result.timings = {**timings, "source_wait": opening.waited, **result.timings}
    if options.keep is not None:
        result.pruned = prune_runs(settings, options.keep)
    result.timings["sync"] = time.perf_counter() - began  # all of it: the warehouse's open, the source's, the run
    return result


def _first_mode(asked: Mode, state: SyncState) -> Mode:
    if asked is Mode.INCREMENTAL and state.last_run_id is None:
        log.warning("no previous sync: running a full sync")
        return Mode.FULL
    return asked


def sync_lock(settings: Settings) -> AbstractContextManager[None]:
    """The one lock of an ADPIPE_HOME's sync, replay and prune: they change the staged runs and the state."""
    return exclusive_lock(settings.home / "sync.lock", "sync")


def prune(settings: Settings, keep: int) -> list[str]:
    """`prune_runs` under the sync lock, so no sync publishes or loads a run while runs are deleted."""
    with sync_lock(settings):
        check_staging(settings)
        return prune_runs(settings, keep)


def drop_capture(settings: Settings) -> str | None:
    """`capture.drop_capture` under the sync lock: a sync or follower running would lose its slot in mid-run."""
    with sync_lock(settings):
        return capture.drop_capture(settings)


def replay(settings: Settings, progress: Progress | None = None) -> list[str]:
    """Rebuild the warehouse from the staged runs alone (no Postgres): the latest full run, then the rest."""
    from pipeline.sync.execute import replay_runs

    with sync_lock(settings):
        check_staging(settings)
        return replay_runs(settings, progress)
