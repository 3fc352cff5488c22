"""Parsing and validating event lines with DuckDB's JSON functions and Polars: every line becomes a typed event
or a quarantine entry.

A line is quarantined, with its number and the first rule it breaks, when it is not a JSON object (bad JSON),
lacks a field (or has it null), has a non-integer id, an unknown `event_type` or a `fired_at` that is
neither `MM/DD/YYYY, HH:MM:SS` nor ISO 8601. `email` and `ip` are never read: they stop here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.catalog import COUNTED_TIMES
from pipeline.referral.events import EVENT_SCHEMA, EVENT_TYPES, ORDER, keep_first
from pipeline.referral.lines import LineChunk

if TYPE_CHECKING:
    import duckdb

QUARANTINE_SCHEMA = pl.Schema(
    {"source": pl.String, "line_number": pl.Int64, "reason": pl.String, "event_id": pl.String}
)
"""The raw line is not kept: it holds email and ip in clear. The file and line number point to it."""

_FIELDS = ("event_id", "customer_id", "user_id", "fired_at", "event_type")
_STRUCTURE = json.dumps(dict.fromkeys(_FIELDS, "VARCHAR"))
"""Every field decoded as text, so a wrong type is a per-line reason rather than a failed chunk (and a JSON 1.5 is
not rounded to an integer id)."""

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
    fields = _decode(chunk)
    frame = fields.with_columns(
        pl.col("customer_id").cast(pl.Int64, strict=False).alias("customer_int"),
        pl.col("user_id").cast(pl.Int64, strict=False).alias("user_int"),
        fired_at_parsed=_parse_fired_at(fields.get_column("fired_at")),
        line_number=pl.int_range(chunk.first_line, chunk.first_line + len(chunk), dtype=pl.Int64),
    )
    valid = (
        pl.col("is_json")
        & pl.col("event_id").is_not_null()
        & (pl.col("event_id") != "")
        & pl.col("customer_int").is_not_null()
        & pl.col("user_int").is_not_null()
        & pl.col("event_type").is_in(EVENT_TYPES)
        & pl.col("fired_at_parsed").is_between(*COUNTED_TIMES, closed="left")
    )
    # A null field makes its test null, not false (`is_in` of a null event_type): such a line is not valid either,
    # and must reach the quarantine rather than fall out of both filters.
    frame = frame.with_columns(valid=valid.fill_null(False))
    events = frame.filter("valid").select(
        "event_id",
        pl.col("customer_int").alias("customer_id"),
        pl.col("user_int").alias("user_id"),
        pl.col("fired_at_parsed").alias("fired_at"),
        "event_type",
        "line_number",
    )
    # The reasons are worked out for the few failing lines only.
    quarantined = frame.filter(~pl.col("valid")).select(
        pl.lit(source).alias("source"), "line_number", _reason().alias("reason"), "event_id"
    )
    return Cleaned(events.cast(dict(EVENT_SCHEMA)), detached(quarantined.cast(dict(QUARANTINE_SCHEMA))))


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
        .when(pl.col("fired_at_parsed").is_null())
        .then(pl.lit("unparseable fired_at"))
        .otherwise(pl.lit("fired_at out of range"))
    )


def _decode(chunk: LineChunk) -> pl.DataFrame:
    """Every line's fields, as text, and `is_json`: whether the line is a JSON object (when not, its fields are null).

    DuckDB's JSON functions decode the lines, reading the chunk's bytes where they are (an Arrow view). On 16 MiB
    chunks of the benchmark file, `clean_chunk` takes ~55 CPU-ms with them against ~71 with Polars' NDJSON reader,
    and they judge each line alone, where Polars fails a whole batch on one malformed line. Lines that do not even
    look like objects are not given to the decoder."""
    import duckdb  # here, not at the top: ~45 ms that only the commands cleaning events need to pay

    lines = pa.table({"line": chunk.arrow(), "object": _looks_like_object(chunk)})
    with _duckdb().cursor() as cursor:
        relation = cursor.from_arrow(lines)
        try:
            return relation.select(_decoded("object")).pl()
        except duckdb.InvalidInputException:  # some object-like line is not valid JSON (rare): check each line
            return relation.select(_decoded("object AND json_valid(line)")).pl()


def _looks_like_object(chunk: LineChunk) -> np.ndarray:
    """Whether each line starts with `{` and ends with `}`, ignoring surrounding whitespace."""
    first, last = chunk.first_and_last_bytes()
    candidate = (first == ord("{")) & (last == ord("}"))
    # Rarer shapes (surrounding whitespace, \r\n) or no object at all: judged one by one, they are few.
    offsets = chunk.offsets
    for row in np.flatnonzero(~candidate).tolist():
        text = bytes(chunk.data[offsets[row] : offsets[row + 1]]).strip()
        candidate[row] = text.startswith(b"{") and text.endswith(b"}")
    return candidate


def _decoded(is_json: str) -> str:
    """The select list decoding the lines for which the SQL condition `is_json` holds (DuckDB's CASE decodes only
    those)."""
    return f"{is_json} AS is_json, unnest(json_transform(CASE WHEN {is_json} THEN line END, '{_STRUCTURE}'))"


@functools.cache
def _duckdb() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB for the process; each decode takes a cursor of it (a connection of its own, cheap and
    safe to use in any thread, where opening a database takes ~17 ms).

    One thread: the decode runs in the reading thread of a load whose other threads keep the second core busy.
    With two, a 10M-event stream load took 14.58 s against 13.72 s (4 alternating pairs)."""
    import duckdb

    return duckdb.connect(config={"threads": 1})


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
