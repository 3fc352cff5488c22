"""Writing a result frame the way every report command offers it: a terminal table, csv, json or parquet."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.atomic import write_atomic
from pipeline.errors import AdpipeError

if TYPE_CHECKING:  # every frame comes from a command that imported Polars already; `--help` need not
    import polars as pl


class OutputFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    PARQUET = "parquet"


def output_format(requested: OutputFormat | None, out: Path | None) -> OutputFormat:
    """The format asked for, else the one `--out`'s suffix names, else a table on the terminal."""
    if requested is None and out is not None:
        try:
            requested = OutputFormat(out.suffix.lstrip(".").lower())
        except ValueError:
            raise AdpipeError(f"cannot tell the format from {out.name!r}: pass --format csv, json or parquet") from None
    if requested is OutputFormat.TABLE and out is not None:
        raise AdpipeError("a table is for the terminal: use --format csv, json or parquet with --out")
    if requested is OutputFormat.PARQUET and out is None:
        raise AdpipeError("--format parquet needs --out FILE")
    return requested or OutputFormat.TABLE


def write_frame(frame: pl.DataFrame, fmt: OutputFormat, out: Path) -> None:
    """Write a result to `out` atomically: a reader never sees half a file."""
    if fmt is OutputFormat.PARQUET:
        write_atomic(out, frame.write_parquet)
    else:
        write_atomic(out, lambda tmp: tmp.write_text(render_frame(frame, fmt)))


def render_frame(frame: pl.DataFrame, fmt: OutputFormat) -> str:
    """A result as csv (header row first) or json (an array of objects, one per row)."""
    if fmt is OutputFormat.CSV:
        return frame.write_csv()
    if fmt is OutputFormat.JSON:
        import polars as pl

        # Exact decimals would become JSON strings; consumers of a JSON report expect numbers.
        # Times as ISO 8601 (`2022-01-05T11:00:00`), fractions of a second only when there are some.
        return (
            frame.with_columns(
                pl.col(pl.Decimal).cast(pl.Float64), pl.col(pl.Datetime).dt.strftime("%Y-%m-%dT%H:%M:%S%.f")
            ).write_json()
            + "\n"
        )
    raise ValueError(f"{fmt} is not a text format")
