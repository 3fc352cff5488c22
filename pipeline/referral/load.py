"""`adpipe events load`: event files → clean → staged day partitions → hourly reports in Postgres, and the
cleaned events in ClickHouse.

1. Check every input first (files readable, --window, the staging store and that it is this home's, Postgres and
   ClickHouse reachable): bad input fails before anything is written.
2. Per file: clean each chunk (batch: the whole file is one chunk), drop repeats, stage what is new. Four
   threads overlap: the next chunk is read and cleaned, this one is deduplicated and aggregated, the previous
   one's new events are written as Parquet parts, and parts already written are inserted into ClickHouse (5).
3. The *touched* hours are the (customer, hour) of every valid event read (also those already staged, so
   a re-load after a crash repairs its hours), the next hour after each page load (a click there may
   relate to it) and the hours of staged copies a new earlier copy replaced.
4. Their reports come from the stream aggregates where this load alone holds the events they depend on,
   otherwise they are recomputed from the staged events (a day at a time, plus HORIZON before it), so
   reports stay right across files: a second file recomputes only the hours it touches.
5. One Postgres transaction replaces the touched hours; the touched days are mirrored to ClickHouse: a day
   first staged by this load part by part as its parts are written (`EventMirror`, overlapping the
   reading), any other touched day after the reports (`replace_event_days`).

The staging directory may be local or on S3 (`pipeline.referral.staging` says what commits a part there).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from pipeline.config import Settings
from pipeline.errors import AdpipeError
from pipeline.killpoints import kill_point
from pipeline.locks import exclusive_lock
from pipeline.options import LoadMode
from pipeline.prefetch import Worker, prefetch
from pipeline.referral.clean import QUARANTINE_SCHEMA, Cleaned, clean_chunk, dedup_earliest, detached
from pipeline.referral.events import DEFAULT_WINDOW_SECONDS, HORIZON, MAX_WINDOW_SECONDS
from pipeline.referral.lines import DEFAULT_BLOCK_BYTES, check_readable, iter_line_chunks
from pipeline.referral.publish import EventMirror, check_report_grants, replace_event_days, write_reports
from pipeline.referral.report import HOUR_KEY, HOURLY_SCHEMA, hour_counts, hourly_reports, touched_hours
from pipeline.referral.staging import StagedKeys, read_range, staged_days, write_events, write_quarantine
from pipeline.referral.stream import StreamAggregator
from pipeline.source import postgres
from pipeline.staging_home import bind_staging, check_staging
from pipeline.storage import Store, open_store
from pipeline.warehouse import client as clickhouse
from pipeline.warehouse.schema import apply_schema

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""(what, done, total) — bytes of a file read so far."""

LATE_REASON = "late"


@dataclass
class LoadSummary:
    mode: str
    window_seconds: int
    files: list[str] = field(default_factory=list)
    lines: int = 0
    valid: int = 0
    """Valid, on-time events after dropping repeats within the file."""
    staged: int = 0
    """Of those, events not staged before (the rest were: a re-load)."""
    duplicates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    """Lines per reason (including `late` in stream mode)."""
    hours: int = 0
    """(customer, hour) keys recomputed."""
    hours_from_stream: int = 0
    days: int = 0
    days_mirrored: int = 0
    """Of those, days sent to ClickHouse part by part while the files were read (the others after the reports)."""
    clickhouse_rows: int = 0
    seconds: float = 0.0
    timings_s: dict[str, float] = field(default_factory=dict)
    """Wall time per stage: read_clean_stage, reports, postgres, clickhouse (after the reports), and
    clickhouse_overlapped (inserts of mirrored parts, run while the other stages were)."""

    @property
    def events_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "events_per_second": round(self.events_per_second)}


def load_files(
    settings: Settings,
    files: list[Path],
    mode: LoadMode = LoadMode.BATCH,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
    progress: Progress | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> LoadSummary:
    started = time.perf_counter()
    if not files:
        raise AdpipeError("no event files given")
    if not 0 <= window_seconds <= MAX_WINDOW_SECONDS:
        raise AdpipeError(f"--window must be between 0 and {MAX_WINDOW_SECONDS} seconds, got {window_seconds}")
    for path in files:
        check_readable(path)
    store = open_store(settings.staging_dir)  # an unreachable S3 staging fails here, before anything is written
    window = timedelta(seconds=window_seconds)
    # One load at a time per ADPIPE_HOME: two would race on the staged days and the touched hours.
    with exclusive_lock(settings.home / "events-load.lock", "events load"):
        check_staging(settings)
        return _load(settings, store, files, mode, window, progress, block_bytes, started)


def _load(
    settings: Settings,
    store: Store,
    files: list[Path],
    mode: LoadMode,
    window: timedelta,
    progress: Progress | None,
    block_bytes: int,
    started: float,
) -> LoadSummary:
    conn = postgres.connect(settings)
    try:
        check_report_grants(conn)
        client = clickhouse.connect(settings)
        apply_schema(client)
        bind_staging(store, settings)
        summary = LoadSummary(mode.value, int(window.total_seconds()), [str(p) for p in files])
        staged_before = staged_days(store)
        keys = StagedKeys(store, set(staged_before))
        touched: list[pl.DataFrame] = []
        streamed: list[pl.DataFrame] = []
        recompute: list[pl.DataFrame] = []
        load_id = uuid.uuid4().hex
        # The stager hands parts to the mirror, so it is left (stopped) first.
        with EventMirror(client, load_id) as mirror, Worker("adpipe-stage") as stager:
            for path in files:
                before = frozenset(keys.days)
                staging = _Staging(stager, mirror, store, before)
                file_touched, file_streamed = _load_file(
                    path, mode, window, keys, staging, summary, progress, block_bytes
                )
                touched.append(file_touched)
                if file_streamed is None:
                    recompute.append(file_touched)
                else:
                    own = _independent(file_touched, before)
                    streamed.append(file_streamed.join(own, on=HOUR_KEY, how="semi"))
                    recompute.append(file_touched.join(own, on=HOUR_KEY, how="anti"))
            mark = _lap(summary, "read_clean_stage", started)
            all_touched = pl.concat(touched).unique()
            to_recompute = pl.concat(recompute).unique()
            from_stream = pl.concat(streamed).join(to_recompute, on=HOUR_KEY, how="anti") if streamed else None
            hourly = pl.concat(
                [_recompute(store, to_recompute, window), *([from_stream] if from_stream is not None else [])]
            )
            mark = _lap(summary, "reports", mark)
            write_reports(conn, all_touched.sort(HOUR_KEY), hourly.sort(HOUR_KEY))
            kill_point("events-postgres-written")
            mark = _lap(summary, "postgres", mark)
            mirrored = mirror.finish()
        days = sorted(set(all_touched.get_column("hour").dt.date().to_list()))
        mixed = staged_before | keys.replaced_days
        rest = [day for day in days if day not in mirrored or day in mixed]
        summary.clickhouse_rows = mirror.rows + replace_event_days(client, store, rest, mixed, load_id)
        _lap(summary, "clickhouse", mark)
        summary.timings_s["clickhouse_overlapped"] = round(mirror.seconds, 3)
        summary.hours = len(all_touched)
        summary.hours_from_stream = 0 if from_stream is None else len(from_stream)
        summary.days = len(days)
        summary.days_mirrored = len(days) - len(rest)
    finally:
        conn.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _lap(summary: LoadSummary, stage: str, since: float) -> float:
    now = time.perf_counter()
    summary.timings_s[stage] = round(now - since, 3)
    return now


def _load_file(
    path: Path,
    mode: LoadMode,
    window: timedelta,
    keys: StagedKeys,
    staging: _Staging,
    summary: LoadSummary,
    progress: Progress | None,
    block_bytes: int,
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Clean and stage one file; returns its touched keys and, in stream mode, its streamed reports."""
    size = path.stat().st_size
    aggregator = StreamAggregator(window) if mode is LoadMode.STREAM else None
    quarantined: list[pl.DataFrame] = []
    touched: list[pl.DataFrame] = []
    # The next chunk is read and cleaned in a thread while this one is deduplicated, aggregated and staged.
    for lines, bytes_read, cleaned in prefetch(_cleaned_chunks(path, block_bytes if aggregator else None)):
        summary.lines += lines
        quarantined.append(cleaned.quarantined)
        if aggregator is None:
            events = dedup_earliest(cleaned.events)
            summary.duplicates += len(cleaned.events) - len(events)
            counts = hour_counts(events)
        else:
            before = aggregator.duplicates
            events, late, counts = aggregator.push(cleaned.events)
            summary.duplicates += aggregator.duplicates - before
            quarantined.append(
                detached(
                    late.select(
                        pl.lit(str(path)).alias("source"),
                        "line_number",
                        pl.lit(LATE_REASON).alias("reason"),
                        "event_id",
                    )
                )
            )
        fresh, _seen, replaced = keys.split(events)
        staging.stage(fresh)
        kill_point("events-chunk")
        summary.valid += len(events)
        summary.staged += len(fresh)
        touched += [touched_hours(counts), touched_hours(hour_counts(replaced))]
        if progress:
            progress(path.name, bytes_read, size)
    keys.add_days(staging.finish_file())
    if quarantined:  # written even when empty: a re-load replaces the file's earlier quarantine
        quarantine = pl.concat(quarantined).cast(dict(QUARANTINE_SCHEMA))
        write_quarantine(keys.store, _source_key(path), quarantine)
        for reason, count in quarantine.group_by("reason").len().iter_rows():
            summary.quarantined[reason] = summary.quarantined.get(reason, 0) + count
    keys_frame = pl.concat(touched).unique().cast(_KEY_SCHEMA) if touched else pl.DataFrame(schema=_KEY_SCHEMA)
    return keys_frame, aggregator.finish() if aggregator else None


_KEY_SCHEMA = {"customer_id": pl.Int64, "hour": pl.Datetime("us")}


@dataclass
class _Staging:
    """Writes one file's new events as Parquet parts in the stager's thread and hands each part to the mirror."""

    stager: Worker
    mirror: EventMirror
    store: Store
    staged_before: frozenset[date]
    """Days staged before the file: replace_event_days redoes those, so the mirror skips them."""
    days: set[date] = field(default_factory=set)
    """Days the file has staged into so far."""

    def stage(self, events: pl.DataFrame) -> None:
        self.stager.submit(self._write, events)

    def finish_file(self) -> set[date]:
        """Wait until every part of the file is written; the days it staged into (the next file checks them)."""
        self.stager.wait()
        return self.days

    def _write(self, events: pl.DataFrame) -> None:
        for part in write_events(self.store, events):
            if part.day in self.staged_before:
                self.mirror.skip(part.day)
            else:
                self.mirror.send(part)
            self.days.add(part.day)


def _cleaned_chunks(path: Path, block_bytes: int | None) -> Iterator[tuple[int, int, Cleaned]]:
    """(lines, bytes of the file read so far, the cleaned lines) per chunk; the raw bytes are not kept."""
    for chunk in iter_line_chunks(path, block_bytes):
        yield len(chunk), chunk.bytes_read, clean_chunk(chunk, str(path))


def _independent(keys: pl.DataFrame, staged_before: frozenset[date]) -> pl.DataFrame:
    """The keys whose reports depend only on events of this file: nothing was staged, before the file, on
    the day of the hour or on the day HORIZON before it."""
    if not staged_before:
        return keys
    before = pl.Series(sorted(staged_before), dtype=pl.Date)
    return keys.filter(
        ~pl.col("hour").dt.date().is_in(before.implode())
        & ~(pl.col("hour") - HORIZON).dt.date().is_in(before.implode())
    )


def _recompute(store: Store, keys: pl.DataFrame, window: timedelta) -> pl.DataFrame:
    """Reports of `keys` from the staged events, a day at a time (plus HORIZON before it for related clicks)."""
    frames = [pl.DataFrame(schema=HOURLY_SCHEMA)]
    for (day,), day_keys in keys.group_by(pl.col("hour").dt.date()):
        start = pl.select(pl.lit(day).cast(pl.Datetime("us"))).item()
        events = read_range(store, start - HORIZON, start + timedelta(days=1))
        frames.append(hourly_reports(events, window).join(day_keys, on=HOUR_KEY, how="semi"))
    return pl.concat(frames)


def _source_key(path: Path) -> str:
    """Names the file's quarantine by its path and first line: a re-load of the file replaces its quarantine, also
    once the file was touched or grew (a log appended to, whose load quarantines its old lines again); a new file
    at the same path (a log rotated) gets a quarantine of its own."""
    with path.open("rb") as handle:
        first_line = handle.readline(1 << 20)
    return hashlib.sha256(f"{path.resolve()}|".encode() + hashlib.sha256(first_line).digest()).hexdigest()[:24]
