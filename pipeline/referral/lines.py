"""Reading a JSON-lines file as chunks of lines with their line numbers, without a Python object per line.

A block of bytes is cut at its last newline; numpy finds the newlines and Arrow wraps the block as a
string array over those offsets (no copy), which the JSON decoder reads in place.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from pipeline.errors import AdpipeError

DEFAULT_BLOCK_BYTES = 16 << 20
"""Stream mode reads 16 MiB at a time (~85,000 lines of a typical file): memory is bounded by this."""


@dataclass(frozen=True)
class LineChunk:
    first_line: int
    """1-based number of the chunk's first line in its file."""
    data: bytes | memoryview
    """The lines back to back, each with its newline (valid UTF-8): the bytes read, or a view of them."""
    offsets: np.ndarray
    """Start of each line in `data`, then the end of the last one."""
    bytes_read: int
    """Bytes of the file read so far, for progress."""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def arrow(self) -> pa.LargeStringArray:
        """The lines as strings, each with its line ending, viewing `data` (no copy)."""
        return pa.LargeStringArray.from_buffers(len(self), pa.py_buffer(self.offsets), pa.py_buffer(self.data))

    def first_and_last_bytes(self) -> tuple[np.ndarray, np.ndarray]:
        """Each line's first byte and the byte before its newline (0 for an empty line), without a string
        per line: the quick test for "looks like a JSON object"."""
        raw = np.frombuffer(self.data, dtype=np.uint8)
        starts, ends = self.offsets[:-1], self.offsets[1:] - 1
        empty = starts == ends
        first = np.where(empty, 0, raw[np.minimum(starts, len(raw) - 1)])
        last = np.where(empty, 0, raw[np.maximum(ends - 1, 0)])
        return first, last


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


_BOM = b"\xef\xbb\xbf"


def iter_line_chunks(path: Path, block_bytes: int | None = DEFAULT_BLOCK_BYTES) -> Iterator[LineChunk]:
    """The file's lines in chunks of about `block_bytes` (None: the whole file as one chunk).

    A byte order mark at the start of the file (as some Windows tools write UTF-8) is not part of its first line."""
    next_line = 1
    with path.open("rb") as handle:
        if handle.read(len(_BOM)) != _BOM:
            handle.seek(0)
        for data in _blocks(handle, block_bytes) if block_bytes else [handle.read()]:
            if not data:
                return
            if data[-1] != 10:  # the last line lacks its newline
                data = bytes(data) + b"\n"
            chunk = _chunk(next_line, data, handle.tell())
            next_line += len(chunk)
            yield chunk


def _blocks(handle: BinaryIO, block_bytes: int) -> Iterator[bytes | memoryview]:
    """Blocks of whole lines: each read is cut after its last newline and the next read starts there.

    Reading the unfinished line again, rather than carrying it over, keeps each block the buffer it was read into
    (no copy of 16 MiB to join a few bytes in front). A line longer than the block is read whole, in a larger read.
    """
    size = block_bytes
    while block := handle.read(size):
        cut = block.rfind(b"\n") + 1
        if cut == 0 and len(block) == size:  # no line ends in this block: read it again, twice as much
            handle.seek(-len(block), os.SEEK_CUR)
            size *= 2
            continue
        if 0 < cut < len(block):
            handle.seek(cut - len(block), os.SEEK_CUR)
            yield memoryview(block)[:cut]
        else:  # ends on a newline, or is the file's last line, without one
            yield block
        size = block_bytes


def _chunk(first_line: int, data: bytes | memoryview, bytes_read: int) -> LineChunk:
    """`data` ends with a newline; find the lines and make sure the text is UTF-8."""
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10) + 1
    offsets = np.concatenate(([0], ends)).astype(np.int64)
    array = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        array.validate(full=True)
    except pa.ArrowInvalid:
        return _chunk(first_line, _utf8_lines_only(data), bytes_read)
    return LineChunk(first_line, data, offsets, bytes_read)


def _utf8_lines_only(data: bytes | memoryview) -> bytes:
    """`data` with every line that is not UTF-8 emptied, so it is quarantined as `bad JSON` on its line number (JSON
    text is UTF-8). Not repaired: bad bytes replaced by U+FFFD made `"id\xff"` and `"id\xfe"` one event_id."""
    return b"\n".join(line if _is_utf8(line) else b"" for line in bytes(data).split(b"\n"))


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode()
    except UnicodeDecodeError:
        return False
    return True
