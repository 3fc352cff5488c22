"""Staged referral events: Parquet day partitions under `$ADPIPE_STAGING_DIR/referral_events/`.

    referral_events/day=2022-01-05/part-<sha256 prefix>.parquet   (zstd, sorted by fired_at)
    referral_quarantine/<source key>.parquet

The staging directory is a local directory or an `s3://bucket/prefix`, read and written through the same
`pipeline.storage.Store` operations.

The commit point is each part itself: a part is named after its content and written whole or not at all
(locally a temp file fsync'd and renamed into place; on S3 one upload, which S3 makes visible only once it
is complete, and S3 has no rename). A part name that exists therefore holds exactly those events, writing
the same events twice is a no-op, and a reader never sees half a part. No manifest is needed because parts
are only added, never rewritten, and each stands alone: a load that dies after staging some parts is
completed by loading the file again (its events are found staged, and its hours are still recomputed and
published). A file's quarantine is replaced the same way, in one write.

Events are only added: a load drops every event already staged (same event_id and event_type, not later),
so re-loading a file stages nothing. When a new copy is *earlier* than the staged one it is staged too,
and readers keep the earliest copy (`dedup_staged`); the hours of the copy it replaces are reported as
touched.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import PurePath

import polars as pl
import pyarrow.parquet as pq

from pipeline.config import StagingDir
from pipeline.referral.events import EVENT_SCHEMA, HORIZON, KEY, ORDER, keep_first
from pipeline.storage import Store, open_store

EVENTS_DIR = "referral_events"
QUARANTINE_DIR = "referral_quarantine"
PART = "part-*.parquet"


def staged_days(store: Store) -> set[date]:
    """Days that have at least one staged part."""
    root = store.root / EVENTS_DIR
    return {
        date.fromisoformat(path.parent.name.removeprefix("day="))
        for path in store.list_files(root)
        if path.parent.parent == root and path.match(f"day=*/{PART}")
    }


def day_directory(store: Store, day: date) -> PurePath:
    return store.root / EVENTS_DIR / f"day={day.isoformat()}"


def day_parts(store: Store, day: date) -> list[PurePath]:
    directory = day_directory(store, day)
    return [path for path in store.list_files(directory) if path.parent == directory and path.match(PART)]


def read_days(store: Store, days: list[date]) -> pl.DataFrame:
    """Every staged row of `days` (duplicates included)."""
    return _read_parquet(store, [path for day in days for path in day_parts(store, day)], EVENT_SCHEMA)


def read_range(store: Store, start: datetime, end: datetime) -> pl.DataFrame:
    """The staged events fired in [start, end), one per key (earliest), in time order."""
    frame = read_days(store, days_between(start, end - timedelta(microseconds=1)))
    return dedup_staged(frame.filter(pl.col("fired_at").is_between(start, end, closed="left")))


def day_as_reported(store: Store, day: date) -> pl.DataFrame:
    """The staged events of `day` the reports count: one per key, none with an earlier copy in the same day or in
    the HORIZON before it. A copy loaded later into the previous day's last hour replaces one staged in this day."""
    start = datetime.combine(day, time())
    return read_range(store, start - HORIZON, start + timedelta(days=1)).filter(pl.col("fired_at") >= start)


def _read_parquet(store: Store, paths: list[PurePath], schema: pl.Schema) -> pl.DataFrame:
    if not paths:
        return pl.DataFrame(schema=schema)
    return pl.concat(pl.from_arrow(store.read_parquet(path, columns=schema.names())) for path in paths)


def dedup_staged(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per key, the first in ORDER, in time order."""
    return keep_first(frame, ORDER)


def days_between(first: datetime, last: datetime) -> list[date]:
    return [first.date() + timedelta(days=i) for i in range((last.date() - first.date()).days + 1)]


@dataclass(frozen=True)
class StagedPart:
    """A part just written: its day, where it is, its bytes and how many events it holds."""

    day: date
    path: PurePath
    data: bytes
    rows: int


def write_events(store: Store, events: pl.DataFrame) -> list[StagedPart]:
    """Stage `events` (EVENT_SCHEMA), one part per UTC day; returns the parts written (not those already there)."""
    written = []
    events = events.select(EVENT_SCHEMA.names())
    if not events.get_column("fired_at").is_sorted():  # the loads hand over events in time order already
        events = events.sort("fired_at", maintain_order=True)
    for (day,), frame in events.group_by(pl.col("fired_at").dt.date(), maintain_order=True):
        data = _parquet_bytes(frame, ["customer_id", "event_type"])
        target = day_directory(store, day) / f"part-{hashlib.sha256(data).hexdigest()[:24]}.parquet"
        if store.is_file(target):  # the same events were staged before
            continue
        store.write_bytes(target, data)
        written.append(StagedPart(day, target, data, len(frame)))
    return written


def _parquet_bytes(frame: pl.DataFrame, dictionary: list[str]) -> bytes:
    """zstd Parquet; only the `dictionary` columns are dictionary-encoded, and only the columns that are not
    strings have statistics. Polars' writer tries a dictionary on every column and drops it for one with many
    values (event_id, user_id), and the min and max of an id string help no reader: PyArrow's writer, told which
    columns repeat and which need statistics, takes ~25% less CPU (19.6 → 14.7 ms per chunk) for ~15% smaller parts."""
    statistics = [name for name, dtype in frame.schema.items() if dtype != pl.String]
    buffer = io.BytesIO()
    pq.write_table(
        frame.to_arrow(),
        buffer,
        compression="zstd",
        compression_level=1,
        use_dictionary=dictionary,
        write_statistics=statistics,
    )
    return buffer.getvalue()


class StagedKeys:
    """The keys already staged before this load, read day by day as the load needs them, so that a load
    stages only events that are new (or earlier than the staged copy)."""

    def __init__(self, store: Store, days: set[date]) -> None:
        self.store = store
        self.days = days
        """Days staged before this load: only those can hold an earlier copy."""
        self._cache: dict[date, pl.DataFrame] = {}
        self.replaced_days: set[date] = set()
        """Days where a staged copy was replaced by an earlier one: they now hold two copies of an event."""

    def split(self, events: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        """(events to stage, events already staged, staged copies that a new earlier copy replaces)."""
        if events.is_empty() or not self.days:
            empty = events.clear()
            return events, empty, empty.select(EVENT_SCHEMA.names())
        first, last = events.get_column("fired_at").min(), events.get_column("fired_at").max()
        days = [d for d in days_between(first - HORIZON, last + HORIZON) if d in self.days]
        staged = self._keys(days) if days else None
        if staged is None or staged.is_empty():
            empty = events.clear()
            return events, empty, empty.select(EVENT_SCHEMA.names())
        pair = events.with_row_index("_row").join(staged, on=KEY, how="left", suffix="_staged")
        is_new = pl.col("fired_at_staged").is_null() | _precedes(ORDER, [f"{c}_staged" for c in ORDER])
        flagged = pair.with_columns(_new=is_new)
        fresh = flagged.filter("_new").sort("_row").select(events.columns)
        seen = flagged.filter(~pl.col("_new")).sort("_row").select(events.columns)
        replaced = flagged.filter(pl.col("_new") & pl.col("fired_at_staged").is_not_null()).select(
            "event_id",
            pl.col("customer_id_staged").alias("customer_id"),
            pl.col("user_id_staged").alias("user_id"),
            pl.col("fired_at_staged").alias("fired_at"),
            "event_type",
        )
        self.replaced_days |= set(replaced.get_column("fired_at").dt.date().unique().to_list())
        return fresh, seen, replaced

    def add_days(self, days: set[date]) -> None:
        """Days a file of this load staged: the next file's events are checked against them too."""
        self.days |= days
        for day in days:
            self._cache.pop(day, None)

    def _keys(self, days: list[date]) -> pl.DataFrame:
        for day in days:
            if day not in self._cache:
                self._cache[day] = read_days(self.store, [day])
        # Days well behind the ones asked for will not be asked again (input is roughly time-ordered).
        for day in [d for d in self._cache if d < days[0] - timedelta(days=1)]:
            del self._cache[day]
        frames = [self._cache[d] for d in days]
        return dedup_staged(pl.concat(frames)) if frames else pl.DataFrame(schema=EVENT_SCHEMA)


def _precedes(left: list[str], right: list[str]) -> pl.Expr:
    """Lexicographic `left < right` over column lists (Polars does not order structs)."""
    head = pl.col(left[0]) < pl.col(right[0])
    if len(left) == 1:
        return head
    return head | ((pl.col(left[0]) == pl.col(right[0])) & _precedes(left[1:], right[1:]))


def quarantine_reasons(staging_dir: StagingDir) -> dict[str, int]:
    """Quarantined event lines per reason, over the quarantine of every loaded file (each file's latest load)."""
    store = open_store(staging_dir)
    directory = store.root / QUARANTINE_DIR
    files = [path for path in store.list_files(directory) if path.parent == directory and path.match("*.parquet")]
    reasons = _read_parquet(store, files, pl.Schema({"reason": pl.String}))
    return dict(reasons.group_by("reason").len().sort("reason").iter_rows())


def write_quarantine(store: Store, source_key: str, quarantined: pl.DataFrame) -> PurePath:
    """Replace the quarantine of one source file (keyed by path, size and mtime: a re-load replaces it)."""
    target = store.root / QUARANTINE_DIR / f"{source_key}.parquet"
    store.write_bytes(target, _parquet_bytes(quarantined, ["source", "reason"]))
    return target
