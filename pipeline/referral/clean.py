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
    fields, is_json = _decode(chunk.lines)
    frame = fields.with_columns(line_number=chunk.line_numbers, is_json=is_json)
    customer_id = pl.col("customer_id").cast(pl.Int64, strict=False)
    user_id = pl.col("user_id").cast(pl.Int64, strict=False)
    fired_at = _parse_fired_at(frame.get_column("fired_at"))
    frame = frame.with_columns(fired_at_parsed=fired_at)
    reason = pl.when(~pl.col("is_json")).then(pl.lit("bad JSON"))
    for name in _FIELDS:
        reason = reason.when(pl.col(name).is_null() | (pl.col(name) == "")).then(pl.lit(f"missing {name}"))
    reason = (
        reason.when(customer_id.is_null())
        .then(pl.lit("customer_id is not an integer"))
        .when(user_id.is_null())
        .then(pl.lit("user_id is not an integer"))
        .when(~pl.col("event_type").is_in(EVENT_TYPES))
        .then(pl.lit("invalid event_type"))
        .when(pl.col("fired_at_parsed").is_null())
        .then(pl.lit("unparseable fired_at"))
    )
    frame = frame.with_columns(reason=reason)
    valid = frame.filter(pl.col("reason").is_null()).select(
        pl.col("event_id"),
        customer_id,
        user_id,
        pl.col("fired_at_parsed").alias("fired_at"),
        pl.col("event_type"),
        pl.col("line_number"),
    )
    quarantined = frame.filter(pl.col("reason").is_not_null()).select(
        pl.lit(source).alias("source"), "line_number", "reason", "event_id"
    )
    return Cleaned(valid.cast(dict(EVENT_SCHEMA)), quarantined.cast(dict(QUARANTINE_SCHEMA)))


def _decode(lines: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
    """The fields of each line as text (nulls for a line that is not a JSON object) and a validity mask.

    Lines that cannot be an object are swapped for `{}` so the decoder sees one object per line and its
    rows stay aligned with the lines, without gathering and scattering columns."""
    looks_like_object = lines.str.starts_with("{") & lines.str.ends_with("}\n")
    if not looks_like_object.all():  # rarer shapes: surrounding whitespace, \r\n, no object at all
        stripped = lines.str.strip_chars()
        looks_like_object = looks_like_object | (stripped.str.starts_with("{") & stripped.str.ends_with("}"))
        lines = pl.select(pl.when(looks_like_object).then(lines).otherwise(pl.lit("{}\n"))).to_series()
    fields, ok = _decode_objects(lines)
    return fields, ok & looks_like_object


def _decode_objects(lines: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
    """Decode lines that look like JSON objects (each ends with its newline) with Polars' NDJSON reader.

    It fails a whole batch on one malformed line, so a failing batch is halved until the malformed lines
    are isolated; lines that look like objects but are not are rare, so this stays near one pass."""
    try:
        fields = pl.read_ndjson(_concatenated(lines), schema=_AS_TEXT.to_schema())
        if len(fields) == len(lines):
            return fields, pl.repeat(True, len(lines), eager=True)
    except pl.exceptions.PolarsError:
        pass
    if len(lines) == 1:
        return pl.DataFrame({name: pl.Series(name, [None], pl.String) for name in _FIELDS}), pl.Series([False])
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
    """One event per key: the earliest (see ORDER, then the first in the file). The result is in time order."""
    return events.sort([*ORDER, "line_number"]).unique(KEY, keep="first", maintain_order=True)
