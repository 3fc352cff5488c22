"""Cleaning lines without any database: shapes of bad JSON, time formats, chunk boundaries."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from pipeline.referral.clean import clean_chunk
from pipeline.referral.lines import iter_line_chunks

OK = '{"event_id": "a1", "customer_id": 3, "user_id": 5, "fired_at": "01/05/2022, 14:23:15", "event_type": "FaqClick"}'


@pytest.mark.parametrize("block_bytes", [None, 7, 64, 1 << 20])
def test_bad_shapes_and_chunk_boundaries(tmp_path: Path, block_bytes: int | None) -> None:
    path = tmp_path / "e.jsonl"
    lines = [
        OK,  # 1
        '{"event_id": }',  # 2 looks like an object, is not
        "  " + OK + " \r",  # 3 whitespace and a CRLF ending: fine
        "",  # 4 blank
        "x",  # 5
        OK.replace("a1", "a2").replace("01/05/2022, 14:23:15", "2022-01-05T16:23:15+02:00"),  # 6 ISO with offset
        OK.replace("a1", "a3").replace('"customer_id": 3', '"customer_id": "3x"'),  # 7
        OK.replace("a1", "a4").replace("\u0022user_id\u0022: 5, ", ""),  # 8 no user_id
        OK.replace("a1", "a5").replace("01/05/2022, 14:23:15", "2022-01-05 14:23:15.250"),  # 9 naive ISO
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff")  # and a last line that is not UTF-8, no newline
    events, quarantined = [], []
    for chunk in iter_line_chunks(path, block_bytes):
        cleaned = clean_chunk(chunk, "e.jsonl")
        events += cleaned.events.select("event_id", "fired_at", "line_number").rows()
        quarantined += cleaned.quarantined.select("line_number", "reason").rows()
    assert events == [
        ("a1", datetime(2022, 1, 5, 14, 23, 15), 1),
        ("a1", datetime(2022, 1, 5, 14, 23, 15), 3),
        ("a2", datetime(2022, 1, 5, 14, 23, 15), 6),
        ("a5", datetime(2022, 1, 5, 14, 23, 15, 250000), 9),
    ]
    assert quarantined == [
        (2, "bad JSON"),
        (4, "bad JSON"),
        (5, "bad JSON"),
        (7, "customer_id is not an integer"),
        (8, "missing user_id"),
        (10, "bad JSON"),
    ]


def test_a_line_that_is_not_utf8_is_quarantined_and_never_merged_with_another(tmp_path: Path) -> None:
    """Two event_ids that differ only in bytes that are not UTF-8 are two bad lines, not one event and a repeat."""
    path = tmp_path / "e.jsonl"
    ok = OK.encode()
    lines = [ok.replace(b"a1", b"id\xff"), ok.replace(b"a1", b"id\xfe"), ok, ok.replace(b"a1", b'a2", "email": "x\xff')]
    path.write_bytes(b"\n".join(lines) + b"\n")
    (chunk,) = iter_line_chunks(path, None)
    cleaned = clean_chunk(chunk, "e.jsonl")
    assert cleaned.events.select("event_id", "line_number").rows() == [("a1", 3)]
    assert cleaned.quarantined.select("line_number", "reason").rows() == [
        (1, "bad JSON"),
        (2, "bad JSON"),
        (4, "bad JSON"),
    ]


def test_ids_must_be_integers_written_as_numbers_or_text(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    lines = [
        OK.replace('"customer_id": 3', '"customer_id": "3"'),  # 1 an integer in a string: accepted
        OK.replace("a1", "b2").replace('"customer_id": 3', '"customer_id": 1.5'),  # 2
        OK.replace("a1", "b3").replace('"user_id": 5', '"user_id": true'),  # 3
        OK.replace("a1", "b4").replace('"user_id": 5', '"user_id": {"id": 5}'),  # 4
        OK.replace("a1", "b5").replace('"user_id": 5', '"user_id": null'),  # 5
        OK.replace("a1", "b6").replace('"customer_id": 3', '"customer_id": 3, "customer_id": 4'),  # 6 first counts
        OK.replace("a1", "b7").replace('"event_type": "FaqClick"', '"event_type": null'),  # 7
    ]
    path.write_text("\n".join(lines) + "\n")
    (chunk,) = iter_line_chunks(path, None)
    cleaned = clean_chunk(chunk, "e.jsonl")
    assert cleaned.events.select("event_id", "customer_id", "line_number").rows() == [("a1", 3, 1), ("b6", 3, 6)]
    assert cleaned.quarantined.select("line_number", "reason").rows() == [
        (2, "customer_id is not an integer"),
        (3, "user_id is not an integer"),
        (4, "user_id is not an integer"),
        (5, "missing user_id"),
        (7, "missing event_type"),
    ]


@pytest.mark.parametrize("block_bytes", [None, 2, 4, 1 << 20])
def test_a_byte_order_mark_at_the_start_of_the_file_is_not_part_of_its_first_line(
    tmp_path: Path, block_bytes: int | None
) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + f"{OK}\n\xef\xbb\xbf{OK}\n".encode())  # only the first one is a mark
    cleaned = [clean_chunk(chunk, "e.jsonl") for chunk in iter_line_chunks(path, block_bytes)]
    assert [row for c in cleaned for row in c.events.select("event_id", "line_number").rows()] == [("a1", 1)]
    assert [row for c in cleaned for row in c.quarantined.select("line_number", "reason").rows()] == [(2, "bad JSON")]


@pytest.mark.parametrize("block_bytes", [1, 2, 5, 13, 26, 27, 28, 40, 79, 80, 81, 1000])
def test_chunks_hold_every_line_once_with_its_number(tmp_path: Path, block_bytes: int) -> None:
    """Blocks cut anywhere: inside a line, right after a newline, in a line longer than the block, at the end."""
    path = tmp_path / "e.jsonl"
    # 26, 1, 53 and 4 bytes with their newlines (line 4 is not UTF-8); the last line has none.
    path.write_bytes(b"abcdefghijklmnopqrstuvwxy\n\n" + b"z" * 52 + b"\na\xffb\nend")
    numbered = []
    for chunk in iter_line_chunks(path, block_bytes):
        lines = chunk.arrow().to_pylist()
        numbered += list(enumerate(lines, start=chunk.first_line))
    assert numbered == [
        (1, "abcdefghijklmnopqrstuvwxy\n"),
        (2, "\n"),
        (3, "z" * 52 + "\n"),
        (4, "\n"),  # not UTF-8: emptied, to be quarantined as bad JSON
        (5, "end\n"),
    ]
    assert chunk.bytes_read == 87
