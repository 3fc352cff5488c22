"""Parsing and validating event lines with Polars: every line becomes a typed event or a quarantine entry.

A line is quarantined, with its number and the first rule it breaks, when it is not a JSON object (bad JSON),
lacks a field (or has it null), has a non-integer id, an unknown `event_type` or a `fired_at` that is
neither `MM/DD/YYYY, HH:MM:SS` nor ISO 8601. `email` and `ip` are never read: they stop here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.referral.events import EVENT_SCHEMA, EVENT_TYPES, ORDER, keep_first
from pipeline.referral.lines import LineChunk

QUARANTINE_SCHEMA = pl.Schema(
    {"source": pl.String, "line_number": pl.Int64, "reason": pl.String, "event_id": pl.String}
)
"""The raw line is not kept: it holds email and ip in clear. The file and line number point to it."""

_FIELDS = ("event_id", "customer_id", "user_id", "fired_at", "event_type")
_AS_TEXT = pl.Struct({name: pl.String for name in _FIELDS})
"""Every field decoded as text, so a wrong type is a per-line reason rather than a failed chunk."""
_TYPED = pl.Schema({**_AS_TEXT.to_schema(), "customer_id": pl.Int64, "user_id": pl.Int64})
"""The fast decode's schema: no id goes through text (~12% less decoding). A chunk it fails is decoded as text."""

US_FORMAT = "%m/%d/%Y, %H:%M:%S"
ISO_UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Cleaned:
    events: pl.DataFrame
    """EVENT_SCHEMA plus `line_number`, in file order."""
    quarantined: pl.DataFrame
    """QUARANTINE_SCHEMA."""


def clean_chunk(chunk: LineChunk, source: str) -> Cleaned:
    """Split a chunk of lines into valid, typed events and quarantined lines."""
    fields, rows, decoded = _decode(chunk)
    frame = fields.with_columns(
        pl.col("customer_id").cast(pl.Int64, strict=False).alias("customer_int"),
        pl.col("user_id").cast(pl.Int64, strict=False).alias("user_int"),
        fired_at_parsed=_parse_fired_at(fields.get_column("fired_at")),
        line_number=pl.Series(rows + chunk.first_line, dtype=pl.Int64),
        is_json=decoded,
    )
    valid = (
        pl.col("is_json")
        & pl.col("event_id").is_not_null()
        & (pl.col("event_id") != "")
        & pl.col("customer_int").is_not_null()
        & pl.col("user_int").is_not_null()
        & pl.col("event_type").is_in(EVENT_TYPES)
        & pl.col("fired_at_parsed").is_not_null()
    )
    frame = frame.with_columns(valid=valid)
    events = frame.filter("valid").select(
        "event_id",
        pl.col("customer_int").alias("customer_id"),
        pl.col("user_int").alias("user_id"),
        pl.col("fired_at_parsed").alias("fired_at"),
        "event_type",
        "line_number",
    )
    # The reasons are worked out for the few failing lines only.
    failing = frame.filter(~pl.col("valid")).select(
        pl.lit(source).alias("source"), "line_number", _reason().alias("reason"), "event_id"
    )
    not_objects = np.setdiff1d(np.arange(len(chunk)), rows, assume_unique=True) + chunk.first_line
    not_json = pl.DataFrame(
        {"source": source, "line_number": not_objects, "reason": "bad JSON", "event_id": None},
        schema=QUARANTINE_SCHEMA,
    )
    quarantined = pl.concat([failing.cast(dict(QUARANTINE_SCHEMA)), not_json]).sort("line_number")
    return Cleaned(events.cast(dict(EVENT_SCHEMA)), detached(quarantined))


def detached(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with its own copy of its strings, for a few rows kept while the chunk they came from is dropped.

    Polars strings filtered out of a column still point into that column's buffers, so a kept quarantine
    entry would hold its whole chunk's text: memory would grow with the file (~190 MB over 10M lines).
    Through Arrow, only the rows' own bytes are copied."""
    return pl.from_arrow(frame.to_arrow())


def _reason() -> pl.Expr:
    """The first rule a line breaks, in the order a reader would check them."""
    reason = pl.when(~pl.col("is_json")).then(pl.lit("bad JSON"))
    for name in _FIELDS:
        # Ids are integers already when the fast decode read the chunk.
        empty = pl.col(name).cast(pl.String) == ""
        reason = reason.when(pl.col(name).is_null() | empty).then(pl.lit(f"missing {name}"))
    return (
        reason.when(pl.col("customer_int").is_null())
        .then(pl.lit("customer_id is not an integer"))
        .when(pl.col("user_int").is_null())
        .then(pl.lit("user_id is not an integer"))
        .when(~pl.col("event_type").is_in(EVENT_TYPES))
        .then(pl.lit("invalid event_type"))
        .otherwise(pl.lit("unparseable fired_at"))
    )


def _decode(chunk: LineChunk) -> tuple[pl.DataFrame, np.ndarray, pl.Series]:
    """Decode the lines that look like JSON objects: (their fields, their row numbers in the chunk, whether each
    really decoded). The other lines are bad JSON.

    The decoder reads the chunk's bytes as they are, or the runs of object-like lines joined (one copy;
    there are as many runs as bad lines, which are few)."""
    first, last = chunk.first_and_last_bytes()
    candidate = (first == ord("{")) & (last == ord("}"))
    if candidate.all():
        rows, data = np.arange(len(chunk)), bytes(chunk.data)  # the decoder takes bytes, not a view: a copy then
    else:
        # Rarer shapes (surrounding whitespace, \r\n) or no object at all: judged one by one, they are few.
        offsets = chunk.offsets
        for row in np.flatnonzero(~candidate).tolist():
            text = bytes(chunk.data[offsets[row] : offsets[row + 1]]).strip()
            candidate[row] = text.startswith(b"{") and text.endswith(b"}")
        rows = np.flatnonzero(candidate)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], candidate.astype(np.int8), [0]))))
        view = memoryview(chunk.data)
        data = b"".join(view[offsets[start] : offsets[end]] for start, end in zip(edges[::2], edges[1::2], strict=True))
    typed = _decode_typed(data, len(rows))
    if typed is not None:
        return typed, rows, pl.repeat(True, len(rows), eager=True)
    fields, ok = _decode_objects(_Lines(chunk, rows), data, len(rows))
    return fields, rows, ok


def _decode_typed(data: bytes, count: int) -> pl.DataFrame | None:
    """The usual case, decoded in one pass with the ids as integers; None when some line needs the careful path
    (malformed, or an id that is not a JSON integer, e.g. `"12"`, which the text decode accepts and `1.5`,
    which it quarantines)."""
    if count == 0:
        return None
    try:
        fields = pl.read_ndjson(data, schema=_TYPED)
    except pl.exceptions.PolarsError:
        return None
    return fields if len(fields) == count else None


@dataclass(frozen=True)
class _Lines:
    """Some rows of a chunk, made into strings only if the fast decode fails and they must be bisected."""

    chunk: LineChunk
    rows: np.ndarray

    def series(self) -> pl.Series:
        return self.chunk.lines.gather(self.rows)


def _decode_objects(lines: pl.Series | _Lines, data: bytes | None, count: int) -> tuple[pl.DataFrame, pl.Series]:
    """Decode `count` lines that look like JSON objects with Polars' NDJSON reader (`data`: their bytes).

    It fails a whole batch on one malformed line, so a failing batch is halved until the malformed lines
    are isolated; lines that look like objects but are not are rare, so this stays near one pass."""
    if count == 0:
        return pl.DataFrame(schema=_AS_TEXT.to_schema()), pl.Series([], dtype=pl.Boolean)
    try:
        fields = pl.read_ndjson(data if data is not None else _concatenated(lines), schema=_AS_TEXT.to_schema())
        if len(fields) == count:
            return fields, pl.repeat(True, count, eager=True)
    except pl.exceptions.PolarsError:
        pass
    if count == 1:
        return pl.DataFrame({name: pl.Series(name, [None], pl.String) for name in _FIELDS}), pl.Series([False])
    if isinstance(lines, _Lines):
        lines = lines.series()
    middle = count // 2
    left, left_ok = _decode_objects(lines.slice(0, middle), None, middle)
    right, right_ok = _decode_objects(lines.slice(middle), None, count - middle)
    return pl.concat([left, right]), left_ok.append(right_ok)


def _concatenated(lines: pl.Series) -> bytes:
    """All lines back to back, copied once from the Arrow value buffer (no Python string per line)."""
    array = lines.to_arrow().cast(pa.large_string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    return array.buffers()[2][offsets[0] : offsets[-1]].to_pybytes()


def _parse_fired_at(text: pl.Series) -> pl.Series:
    """`MM/DD/YYYY, HH:MM:SS` (UTC) or ISO 8601, naive (taken as UTC) or with an offset (converted to UTC).

    The usual format is tried on every value, the usual ISO form (`2022-01-05T14:23:15Z`) on the values it did
    not parse, and the other ISO forms on what is left."""
    parsed = text.str.strptime(pl.Datetime("us"), US_FORMAT, strict=False)
    # The usual ISO form stays on Polars' fast path: the general parse below is ~9x slower per value.
    parsed = _fill_unparsed(text, parsed, lambda iso: iso.str.strptime(pl.Datetime("us"), ISO_UTC_FORMAT, strict=False))
    return _fill_unparsed(text, parsed, _parse_iso)


def _fill_unparsed(text: pl.Series, parsed: pl.Series, parse: Callable[[pl.Series], pl.Series]) -> pl.Series:
    """`parsed`, with `parse` applied to the text of the values still unparsed (few, after the first format)."""
    retry = (parsed.is_null() & text.is_not_null()).arg_true()
    return parsed.scatter(retry, parse(text.gather(retry))) if len(retry) else parsed


def _parse_iso(text: pl.Series) -> pl.Series:
    iso = text.str.replace(" ", "T", literal=True).str.replace(r"[Zz]$", "+00:00")
    naive = iso.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S%.f", strict=False)
    zoned = iso.str.strptime(pl.Datetime("us", "UTC"), "%Y-%m-%dT%H:%M:%S%.f%#z", strict=False)
    return naive.fill_null(zoned.dt.replace_time_zone(None))


def dedup_earliest(events: pl.DataFrame) -> pl.DataFrame:
    """One event per key: the earliest (see ORDER, then the first in the file), in time order."""
    return keep_first(events, [*ORDER, "line_number"])
