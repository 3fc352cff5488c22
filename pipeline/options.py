"""Choices the sync and the events load offer, kept free of heavy imports so the CLI can build its options quickly."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_CHUNK_ROWS = 1_000_000


class Mode(StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


class Engine(StrEnum):
    """The Postgres reader. ADBC (COPY-based) is the default: 1.53-1.58x faster than ConnectorX here (bench_extract)."""

    CONNECTORX = "connectorx"
    ADBC = "adbc"


class OnReset(StrEnum):
    """What an incremental sync does when the source was reset: stop with advice, or run a full sync."""

    STOP = "stop"
    FULL = "full"


Progress = Callable[[str, int, int], None]
"""Called with (what, done, total) as work advances."""


@dataclass
class SyncOptions:
    mode: Mode = Mode.INCREMENTAL
    engine: Engine = Engine.ADBC
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    partitions: int = 2
    on_reset: OnReset = OnReset.STOP
    keep: int | None = None
    """After a successful run, prune the staged runs to the newest `keep` (never those still needed)."""
    repair: bool = False
    """Compare every fact synced before with the source, bucket by bucket, and stage what differs
    (`pipeline.sync.repair`): for sources without change capture."""
    progress: Progress | None = None


class LoadMode(StrEnum):
    """How `events load` reads a file: whole (batch) or in bounded chunks with running aggregates (stream)."""

    BATCH = "batch"
    STREAM = "stream"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from `500ms`, `5s`, `2m`, `1h` or a plain number of seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use e.g. 500ms, 5s, 2m or 1h")
    return float(match[1]) * _UNIT_SECONDS[match[2] or "s"]
