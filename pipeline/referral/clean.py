"""Parsing and validating event lines with Polars: every line becomes a typed event or a quarantine entry.

A line is quarantined, with its number and the first rule it breaks, when it is not a JSON object (bad JSON),
lacks a field (or has it null), has a non-integer id, an unknown `event_type` or a `fired_at` that is
neither `MM/DD/YYYY, HH:MM:SS` nor ISO 8601. `email` and `ip` are never read: they stop here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.referral.events import EVENT_SCHEMA, EVENT_TYPES, KEY, ORDER
from pipeline.referral.lines import LineChunk

QUARANTINE_SCHEMA = pl.Schema(
    {"source": pl.String, "line_number": pl.Int64, "reason": pl.String, "event_id": pl.String}
)
"""The raw line is not kept: it holds email and ip in clear. The file and line number point to it."""

_FIELDS = ("event_id", "customer_id", "user_id", "fired_at", "event_type")
_AS_TEXT = pl.Struct({name: pl.String for name in _FIELDS})
"""Every field decoded as text first, so a wrong type is a per-line reason rather than a failed chunk."""

US_FORMAT = "%m/%d/%Y, %H:%M:%S"


@dataclass(frozen=True)
class Cleaned:
    events: pl.DataFrame
    """EVENT_SCHEMA plus `line_number`, in file order."""
    quarantined: pl.DataFrame
    """QUARANTINE_SCHEMA."""


def clean_chunk(chunk: LineChunk, source: str) -> Cleaned:
    """Split a chunk of lines into valid, typed events and quarantined lines."""
    fields, is_json = _decode(chunk)
    frame = fields.with_columns(
        pl.col("customer_id").cast(pl.Int64, strict=False).alias("customer_int"),
        pl.col("user_id").cast(pl.Int64, strict=False).alias("user_int"),
        fired_at_parsed=_parse_fired_at(fields.get_column("fired_at")),
        line_number=chunk.line_numbers,
        is_json=is_json,
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
    quarantined = frame.filter(~pl.col("valid")).select(
        pl.lit(source).alias("source"), "line_number", _reason().alias("reason"), "event_id"
    )
    return Cleaned(events.cast(dict(EVENT_SCHEMA)), quarantined.cast(dict(QUARANTINE_SCHEMA)))


def _reason() -> pl.Expr:
    """The first rule a line breaks, in the order a reader would check them."""
    reason = pl.when(~pl.col("is_json")).then(pl.lit("bad JSON"))
    for name in _FIELDS:
        reason = reason.when(pl.col(name).is_null() | (pl.col(name) == "")).then(pl.lit(f"missing {name}"))
    return (
        reason.when(pl.col("customer_int").is_null())
        .then(pl.lit("customer_id is not an integer"))
        .when(pl.col("user_int").is_null())
        .then(pl.lit("user_id is not an integer"))
        .when(~pl.col("event_type").is_in(EVENT_TYPES))
        .then(pl.lit("invalid event_type"))
        .otherwise(pl.lit("unparseable fired_at"))
    )


def _decode(chunk: LineChunk) -> tuple[pl.DataFrame, pl.Series]:
    """The fields of each line as text (nulls for a line that is not a JSON object) and a validity mask.

    The decoder reads the chunk's bytes as they are, with each line that cannot be an object overwritten
    in place by `{}` and spaces (same length), so its rows stay aligned with the lines."""
    first, last = chunk.first_and_last_bytes()
    plain_object = (first == ord("{")) & (last == ord("}"))
    if plain_object.all():
        return _decode_objects(chunk, chunk.data)
    # Rarer shapes: surrounding whitespace, \r\n, or no object at all.
    lines = chunk.lines
    stripped = lines.str.strip_chars()
    looks_like_object = pl.Series(plain_object) | (stripped.str.starts_with("{") & stripped.str.ends_with("}"))
    patched = bytearray(chunk.data)
    for row in looks_like_object.not_().arg_true().to_list():
        start, end = int(chunk.offsets[row]), int(chunk.offsets[row + 1])
        patched[start:end] = (b"{}" + b" " * (end - start - 3) + b"\n") if end - start >= 3 else b"\n" * (end - start)
    fields, ok = _decode_objects(lines, bytes(patched))
    return fields, ok & looks_like_object


def _decode_objects(lines: pl.Series | LineChunk, data: bytes | None = None) -> tuple[pl.DataFrame, pl.Series]:
    """Decode lines that look like JSON objects with Polars' NDJSON reader (`data`: the lines' bytes).

    It fails a whole batch on one malformed line, so a failing batch is halved until the malformed lines
    are isolated; lines that look like objects but are not are rare, so this stays near one pass."""
    try:
        fields = pl.read_ndjson(data if data is not None else _concatenated(lines), schema=_AS_TEXT.to_schema())
        if len(fields) == len(lines):
            return fields, pl.repeat(True, len(lines), eager=True)
    except pl.exceptions.PolarsError:
        pass
    if len(lines) == 1:
        return pl.DataFrame({name: pl.Series(name, [None], pl.String) for name in _FIELDS}), pl.Series([False])
    if isinstance(lines, LineChunk):
        lines = lines.lines
    middle = len(lines) // 2
    left, left_ok = _decode_objects(lines.slice(0, middle))
    right, right_ok = _decode_objects(lines.slice(middle))
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

    The usual format is tried on every value; the ISO formats only on the values it did not parse."""
    parsed = text.str.strptime(pl.Datetime("us"), US_FORMAT, strict=False)
    retry = (parsed.is_null() & text.is_not_null()).arg_true()
    if len(retry):
        iso = text.gather(retry).str.replace(" ", "T", literal=True).str.replace(r"[Zz]$", "+00:00")
        naive = iso.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S%.f", strict=False)
        zoned = iso.str.strptime(pl.Datetime("us", "UTC"), "%Y-%m-%dT%H:%M:%S%.f%#z", strict=False)
        parsed = parsed.scatter(retry, naive.fill_null(zoned.dt.replace_time_zone(None)))
    return parsed


def dedup_earliest(events: pl.DataFrame) -> pl.DataFrame:
    """One event per key: the earliest (see ORDER, then the first in the file), in time order.

    Only the rows whose key repeats (about 1%) are sorted to pick one; hashing finds them in one pass."""
    repeated = events.select(pl.struct(KEY).is_duplicated()).to_series()
    if not repeated.any():
        return events.sort("fired_at", maintain_order=True)
    picked = events.filter(repeated).sort([*ORDER, "line_number"]).unique(KEY, keep="first", maintain_order=True)
    return pl.concat([events.filter(~repeated), picked]).sort("fired_at", maintain_order=True)
