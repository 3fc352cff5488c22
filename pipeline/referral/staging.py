"""Staged referral events: Parquet day partitions under `$ADPIPE_STAGING_DIR/referral_events/`.

    referral_events/day=2022-01-05/part-<sha256 prefix>.parquet   (zstd, sorted by fired_at)
    referral_quarantine/<source key>.parquet

A part is written to a temp file and renamed to a name derived from its content, so writing the same
events twice is a no-op and a reader never sees half a file. Events are only added: a load drops every
event already staged (same event_id and event_type, not later), so re-loading a file stages nothing.
When a new copy is *earlier* than the staged one it is staged too, and readers keep the earliest copy
(`dedup_staged`); the hours of the copy it replaces are reported as touched.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl

from pipeline.config import StagingDir
from pipeline.referral.events import EVENT_SCHEMA, HORIZON, KEY, ORDER

EVENTS_DIR = "referral_events"
QUARANTINE_DIR = "referral_quarantine"


def events_root(staging_dir: Path) -> Path:
    return staging_dir / EVENTS_DIR


def staged_days(root: Path) -> set[date]:
    """Days that have at least one staged part."""
    if not root.exists():
        return set()
    return {
        date.fromisoformat(d.name.removeprefix("day="))
        for d in root.glob("day=*")
        if d.is_dir() and any(d.glob("part-*.parquet"))
    }


def day_parts(root: Path, day: date) -> list[Path]:
    return sorted((root / f"day={day.isoformat()}").glob("part-*.parquet"))


def read_days(root: Path, days: list[date]) -> pl.DataFrame:
    """Every staged row of `days` (duplicates included)."""
    files = [path for day in days for path in day_parts(root, day)]
    if not files:
        return pl.DataFrame(schema=EVENT_SCHEMA)
    return pl.read_parquet(files)


def read_range(root: Path, start: datetime, end: datetime) -> pl.DataFrame:
    """The staged events fired in [start, end), one per key (earliest), in time order."""
    frame = read_days(root, days_between(start, end - timedelta(microseconds=1)))
    return dedup_staged(frame.filter(pl.col("fired_at").is_between(start, end, closed="left")))


def dedup_staged(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per key, the first in ORDER, in time order. Only keys that repeat are sorted to pick one."""
    repeated = frame.select(pl.struct(KEY).is_duplicated()).to_series()
    if repeated.any():
        picked = frame.filter(repeated).sort(ORDER).unique(KEY, keep="first", maintain_order=True)
        frame = pl.concat([frame.filter(~repeated), picked])
    return frame.sort("fired_at", maintain_order=True)


def days_between(first: datetime, last: datetime) -> list[date]:
    return [first.date() + timedelta(days=i) for i in range((last.date() - first.date()).days + 1)]


def write_events(root: Path, events: pl.DataFrame) -> int:
    """Stage `events` (EVENT_SCHEMA), one part per UTC day; returns the number of parts written."""
    written = 0
    events = events.select(EVENT_SCHEMA.names()).sort("fired_at", maintain_order=True)
    for (day,), part in events.group_by(pl.col("fired_at").dt.date(), maintain_order=True):
        written += _write_part(root / f"day={day.isoformat()}", part)
    return written


def _write_part(directory: Path, frame: pl.DataFrame) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".part-", suffix=".tmp")
    os.close(fd)
    try:
        frame.write_parquet(tmp, compression="zstd", compression_level=1, statistics=True)
        target = directory / f"part-{_sha256(Path(tmp))[:24]}.parquet"
        if target.exists():  # the same events were staged before
            return 0
        os.replace(tmp, target)
        return 1
    finally:
        Path(tmp).unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StagedKeys:
    """The keys already staged before this load, read day by day as the load needs them, so that a load
    stages only events that are new (or earlier than the staged copy)."""

    def __init__(self, root: Path, days: set[date]) -> None:
        self.root = root
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
        staged = self._keys(days)
        if staged.is_empty():
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
                self._cache[day] = read_days(self.root, [day])
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
    if not isinstance(staging_dir, Path):
        return {}  # events are not staged on S3 (`events load` refuses it), so none are quarantined there
    files = sorted((staging_dir / QUARANTINE_DIR).glob("*.parquet"))
    if not files:
        return {}
    counts = pl.read_parquet(files, columns=["reason"]).group_by("reason").len().sort("reason")
    return dict(counts.iter_rows())


def write_quarantine(staging_dir: Path, source_key: str, quarantined: pl.DataFrame) -> Path:
    """Replace the quarantine of one source file (keyed by path, size and mtime: a re-load replaces it)."""
    directory = staging_dir / QUARANTINE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{source_key}.parquet"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".q-", suffix=".tmp")
    os.close(fd)
    try:
        quarantined.write_parquet(tmp, compression="zstd", compression_level=1)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
