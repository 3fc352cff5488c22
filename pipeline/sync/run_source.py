"""A run's source side, opened on a thread of its own while the run's modules are imported and the warehouse opens.

Opening the source connects to Postgres, takes the run's snapshot, starts reading the new rows of each fact table
(`FactRead`, side by side, each in a thread of its own), reads the change-capture slot up to the snapshot and
reads again the rows of the facts it names: work done mostly by the Postgres server, while this process waits.
Opening the embedded warehouse is work done here (loading chDB and its tables), holding the interpreter for a tenth
of a second or more at a time. Side by side, the slot read and the re-read run on the server while the warehouse
opens (docs/performance.md, Change capture).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.catalog import FACTS, FIRST_ID
from pipeline.config import Settings
from pipeline.options import Engine, Mode
from pipeline.prefetch import Prefetch
from pipeline.sync.capture import Changes, RunCapture, run_capture
from pipeline.sync.extract import SourceReader
from pipeline.sync.state import FactState, SyncState


@dataclass(frozen=True)
class SourceOptions:
    """How a run reads the source: the reader, parallel reads per chunk, rows per chunk."""

    engine: Engine
    partitions: int
    chunk_rows: int


@dataclass(frozen=True)
class FactChunk:
    """Rows of a fact table read for a run."""

    rows: pa.Table
    covers: tuple[int, int] | None
    """(after, upto): the chunk holds every row with after < id <= upto. None: the rows outside the id sync, found
    in earlier gaps or below `catalog.FIRST_ID`."""


class FactRead:
    """The rows of one fact table a run stages, read ahead in a thread from the moment it is created: the rows that
    filled the earlier gaps of `previous` and any with an id below `catalog.FIRST_ID`, then chunks of `chunk_rows`
    rows above its high-water id, up to the highest id in the snapshot (`high_water`). Iterating gives `FactChunk`s
    in that order; `close()` stops it.
    """

    def __init__(self, reader: SourceReader, table: str, previous: FactState, chunk_rows: int) -> None:
        self.table, self.previous, self.chunk_rows = table, previous, chunk_rows
        self.high_water = reader.max_id(table)
        self.chunks = Prefetch(self._read(reader), name=f"adpipe-read-{table}")

    def _read(self, reader: SourceReader) -> Iterator[FactChunk]:
        gaps = [(gap.lo, gap.hi) for gap in self.previous.gaps]
        outside = reader.read_ids_in(self.table, gaps, below=FIRST_ID)
        if gaps or outside.num_rows:  # with gaps, even none filled: the run carries those still open
            yield FactChunk(outside, None)
        chunks = reader.read_id_range(self.table, self.previous.high_water, self.high_water, self.chunk_rows)
        for after, upto, rows in chunks:
            yield FactChunk(rows, (after, upto))

    def close(self) -> None:
        self.chunks.close()


def previous_fact(state: SyncState, table: str, mode: Mode) -> FactState:
    """What a run in `mode` starts a fact table from: nothing for a full run, else the committed state."""
    return FactState() if mode is Mode.FULL else state.facts.get(table, FactState())


@dataclass
class RunSource:
    """What a run reads: the source in its snapshot, and the slot's changes as of that snapshot."""

    reader: SourceReader
    capture: RunCapture
    changes: Changes | None
    """None: change capture is off (the fallback checks apply)."""
    closing: ExitStack
    """Closes the fact reads, the reader and the capture."""
    reread: dict[str, tuple[list[int], pa.Table]] = field(default_factory=dict)
    """Fact table → the changed ids synced before (`already_synced`) and their rows, read when the source opened."""
    reads: dict[str, FactRead] = field(default_factory=dict)
    """Fact table → its new rows, being read since the source opened."""

    @property
    def seen(self) -> Changes:
        """The slot's changes, empty when change capture is off: what the run applies and records."""
        return self.changes or Changes()

    @property
    def slot(self) -> str | None:
        """The trusted slot the run's state will follow; None: change capture off."""
        return self.capture.slot if self.capture.trusted else None

    def fact_read(self, table: str, previous: FactState, chunk_rows: int) -> FactRead:
        """The table's new rows: the read started when the source opened, if it starts from the same state (the run
        kept the mode it was opened for), else one started now. Closed with the source."""
        read = self.reads.get(table)
        if read is None or read.previous != previous or read.chunk_rows != chunk_rows:
            if read is not None:
                read.close()
            read = self.reads[table] = FactRead(self.reader, table, previous, chunk_rows)
            self.closing.callback(read.close)
        return read

    def rows_of(self, table: str, ids: list[int]) -> pa.Table:
        """The rows of `ids` in the run's snapshot, from those read on opening when they are the same ids."""
        read_ids, rows = self.reread.get(table, (None, None))
        return rows if read_ids == ids and rows is not None else self.reader.read_ids(table, ids)


def open_run_source(
    settings: Settings,
    reading: SourceOptions,
    state: SyncState,
    mode: Mode,
    on_snapshot: Callable[[SourceReader], None] = lambda _: None,
) -> RunSource:
    """Open change capture (before the snapshot, see `run_capture`), the reader and its snapshot, start reading the
    facts' new rows, read the slot; for an incremental run, read again the rows of the changed facts synced before.
    `on_snapshot` is called with the reader once its snapshot is taken, before the slot is read."""
    with ExitStack() as stack:
        capture = stack.enter_context(run_capture(settings, state, full=mode is Mode.FULL))
        reader = stack.enter_context(SourceReader(settings, reading.engine, reading.partitions))
        capture.check_snapshot(reader.snapshot)
        on_snapshot(reader)
        reads = {}
        for table in FACTS:
            reads[table] = FactRead(reader, table, previous_fact(state, table, mode), reading.chunk_rows)
            stack.callback(reads[table].close)
        stack.push(_cancel_on_error(reader))
        changes = capture.read(reader.snapshot)
        reread = {}
        if mode is Mode.INCREMENTAL and changes is not None:
            for table in FACTS:
                ids = already_synced(changes.changed.get(table, frozenset()), previous_fact(state, table, mode))
                if ids:
                    reread[table] = (ids, reader.read_ids(table, ids))
        return RunSource(reader, capture, changes, stack.pop_all(), reread, reads)


def _cancel_on_error(reader: SourceReader) -> Callable[..., bool]:
    """An exit callback: when the run stops on an error (Ctrl-C too), the reads still running are cancelled before
    they are closed, rather than waited for."""

    def cancel(exc_type: type[BaseException] | None, *_: object) -> bool:
        if exc_type is not None:
            reader.cancel()
        return False

    return cancel


def already_synced(ids: frozenset[int], previous: FactState) -> list[int]:
    """The ids at or below the high-water mark and outside its gaps, sorted."""
    candidates = np.fromiter(ids, dtype=np.int64, count=len(ids))
    keep = candidates <= previous.high_water
    for gap in previous.gaps:
        keep &= ~((candidates >= gap.lo) & (candidates <= gap.hi))
    return sorted(int(i) for i in candidates[keep])


class OpeningSource:
    """`open_run_source` running on its own thread. `result()` hands the opened source over to the caller, who then
    closes it; leaving the `with` block without taking it waits for the thread and closes what it opened.

    Entering the block waits (up to `CONNECT_WAIT` seconds) for the snapshot: connecting takes the interpreter in
    many short turns, which the warehouse's open would stretch from hundredths of a second to tenths.
    """

    CONNECT_WAIT = 1.0

    def __init__(self, settings: Settings, reading: SourceOptions, state: SyncState, mode: Mode) -> None:
        self._snapshot_taken = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adpipe-source")
        self._future: Future[RunSource] = self._pool.submit(self._open, settings, reading, state, mode)
        self._taken = False
        self._reader: SourceReader | None = None
        self.waited = 0.0
        """Seconds spent waiting for the thread: how much of the opening the warehouse's did not hide."""

    def _open(self, settings: Settings, reading: SourceOptions, state: SyncState, mode: Mode) -> RunSource:
        try:
            return open_run_source(settings, reading, state, mode, self._snapshot)
        finally:
            self._snapshot_taken.set()

    def _snapshot(self, reader: SourceReader) -> None:
        self._reader = reader
        self._snapshot_taken.set()

    def __enter__(self) -> OpeningSource:
        began = time.perf_counter()
        try:
            self._snapshot_taken.wait(self.CONNECT_WAIT)
        except BaseException as exc:  # Ctrl-C: the block is not entered, so its exit would not run
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self.waited += time.perf_counter() - began
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """Wait for the thread, and close what it opened unless the caller took it. Leaving on an error (Ctrl-C
        too), what the reader is running is cancelled first, rather than waited for."""
        if exc_type is not None and not self._taken and self._reader is not None:
            self._reader.cancel()
        self._pool.shutdown(wait=True)
        if not self._taken and self._future.exception() is None:
            self._future.result().closing.close()

    def result(self) -> RunSource:
        """The opened source (its error, if opening failed). The caller owns it from here on."""
        began = time.perf_counter()
        try:
            source = self._future.result()
        finally:
            self.waited += time.perf_counter() - began
        self._taken = True
        return source
