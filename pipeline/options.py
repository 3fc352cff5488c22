"""Choices the sync and the events load offer, kept free of heavy imports so the CLI can build its options quickly."""

from __future__ import annotations

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


class LoadMode(StrEnum):
    """How `events load` reads a file: whole (batch) or in bounded chunks with running aggregates (stream)."""

    BATCH = "batch"
    STREAM = "stream"
