"""Reading a JSON-lines file as chunks of lines with their line numbers, without a Python object per line.

A block of bytes is cut at its last newline; numpy finds the newlines and Arrow wraps the block as a
string array over those offsets (no copy), which Polars then takes over.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.errors import AdpipeError

DEFAULT_BLOCK_BYTES = 32 << 20
"""Stream mode reads 32 MiB at a time (~150,000 lines of a typical file): memory is bounded by this."""


@dataclass(frozen=True)
class LineChunk:
    first_line: int
    """1-based number of the chunk's first line in its file."""
    lines: pl.Series
    """The lines as strings, each with its line ending (JSON ignores trailing whitespace)."""
    bytes_read: int
    """Bytes of the file read so far, for progress."""

    @property
    def line_numbers(self) -> pl.Series:
        return pl.int_range(self.first_line, self.first_line + len(self.lines), dtype=pl.Int64, eager=True)


def check_readable(path: Path) -> None:
    """Refuse a path that is missing, not a file, or unreadable, before anything is written."""
    if not path.exists():
        raise AdpipeError(f"{path}: no such file")
    if not path.is_file():
        raise AdpipeError(f"{path}: not a file")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise AdpipeError(f"{path}: cannot read ({exc.strerror})") from None


def iter_line_chunks(path: Path, block_bytes: int | None = DEFAULT_BLOCK_BYTES) -> Iterator[LineChunk]:
    """The file's lines in chunks of about `block_bytes` (None: the whole file as one chunk)."""
    next_line = 1
    read = 0
    carry = b""
    with path.open("rb") as handle:
        while True:
            block = handle.read(block_bytes) if block_bytes else handle.read()
            at_end = not block
            read += len(block)
            data = carry + block
            if at_end:
                if data:
                    data += b"\n"  # the last line may lack its newline
                else:
                    return
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if cut:
                lines = _split(data[:cut])
                yield LineChunk(next_line, lines, read)
                next_line += len(lines)
            if at_end or not block_bytes:
                if not at_end and carry:
                    data, carry = carry + b"\n", b""
                    lines = _split(data)
                    yield LineChunk(next_line, lines, read)
                return


def _split(data: bytes) -> pl.Series:
    """`data` ends with a newline; one string per line."""
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10) + 1
    offsets = np.concatenate(([0], ends)).astype(np.int64)
    array = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        array.validate(full=True)
    except pa.ArrowInvalid:
        # Not UTF-8 somewhere: replace the bad bytes so the line can still be judged (and quarantined).
        return _split(data.decode("utf-8", errors="replace").encode())
    return pl.Series("line", array)
