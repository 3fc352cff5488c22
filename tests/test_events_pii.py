"""The emails and IP addresses of referral event lines are kept nowhere, by value, not only by column name.

The values are taken from the very lines loaded (hand-written ones, each with an address of its own, and a generated
file's Faker addresses), then searched for as text: in the bytes of every file adpipe wrote (staged parts, quarantine
files, its home) and in every value of those that are Parquet (read back, so zstd cannot hide one), in every row of
every ClickHouse table of the test's database, in every row of every Postgres table (`referral.*` and the source's),
and in everything logged or printed. `test_the_search_finds_an_address_wherever_it_is_kept` shows the search finds one
in each of those places when it is there.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import Settings
from pipeline.referral.generate import generate_file
from pipeline.referral.load import LoadMode, load_files
from pipeline.warehouse import client as clickhouse
from pipeline.warehouse.client import quote_identifier
from tests.conftest import run_cli
from tests.test_events_load import CL, PL, write


def line(number: int, event_id: str, user: int | None, fired_at: str, event_type: str) -> str:
    """A line of customer 1 whose email and ip are its own: pii.<number>@leak.example, 198.51.100.<number>."""
    return json.dumps(
        {
            "event_id": event_id,
            "customer_id": 1,
            "user_id": user,
            "fired_at": fired_at,
            "event_type": event_type,
            "ip": f"198.51.100.{number}",
            "email": f"pii.{number}@leak.example",
        }
    )


HAND_LINES = [
    line(1, "p1", 1, "01/05/2022, 10:30:00", PL),  # 1
    line(2, "p1", 1, "01/05/2022, 10:31:00", CL),  # 2 related click
    line(3, "p1", 1, "01/05/2022, 10:30:00", PL),  # 3 duplicate of line 1
    line(4, "p4", 2, "01/05/2022, 10:32:00", "EMPTY_VALUE"),  # 4 invalid event_type
    line(5, "p5", None, "01/05/2022, 10:33:00", CL),  # 5 missing user_id
    '{"event_id": "p6", "ip": "198.51.100.6", "email": "pii.6@leak.example", "fired_at": ',  # 6 bad JSON
    line(7, "p7", 3, "13/45/2022, 10:34:00", PL),  # 7 unparseable fired_at
    line(8, "p8", 4, "01/05/2022, 10:35:00", PL).replace('"customer_id": 1', '"customer_id": "one"'),  # 8
    line(9, "p9", 5, "01/05/2022, 10:10:00", PL),  # 9 21 min behind line 2: late in stream mode, valid in batch
]
HAND_QUARANTINED = {
    LoadMode.BATCH: [4, 5, 6, 7, 8],
    LoadMode.STREAM: [4, 5, 6, 7, 8, 9],
}
"""Line numbers of the hand-written file that each mode quarantines."""


def addresses(path: Path) -> set[str]:
    """Every email and ip written in a file of event lines, as the lines hold them."""
    text = path.read_text()
    return set(re.findall(r'"(?:email|ip)": "([^"]+)"', text))


def parquet_text(path: Path) -> str:
    """Every value of a Parquet file, as text: what its compressed pages hold, decoded."""
    return "\n".join(str(row) for row in pq.read_table(path).to_pylist())


def file_texts(*roots: Path) -> dict[str, tuple[bytes, str]]:
    """Per file under `roots`: its raw bytes and, for Parquet, its values as text."""
    found = {}
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            found[str(path)] = (data, parquet_text(path) if data[:4] == b"PAR1" else "")
    return found


def clickhouse_texts(settings: Settings) -> dict[str, str]:
    """Per table of the test's ClickHouse database (views read tables, so they are left out): every row, as text."""
    client = clickhouse.connect(settings)
    tables = client.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND engine NOT IN ('View', 'MaterializedView') ORDER BY name"
    ).result_rows
    assert len(tables) >= 9  # the warehouse schema is there: the dump is not of an empty database
    return {
        f"clickhouse {name}": "\n".join(map(str, client.query(f"SELECT * FROM {quote_identifier(name)}").result_rows))
        for (name,) in tables
    }


def postgres_texts(pg: psycopg.Connection) -> dict[str, str]:
    """Per table of the source database's `referral` and `public` schemas: every row, as text."""
    tables = pg.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema IN ('referral', 'public') AND table_type = 'BASE TABLE' ORDER BY 1, 2"
    ).fetchall()
    assert ("referral", "page_loads") in tables
    return {
        f"postgres {schema}.{name}": "\n".join(
            row[0] for row in pg.execute(f'SELECT t::text FROM "{schema}"."{name}" t').fetchall()
        )
        for schema, name in tables
    }


def where_kept(settings: Settings, pg: psycopg.Connection, values: set[str], output: str) -> dict[str, list[str]]:
    """Each of `values` found somewhere, with the places it was found: files (bytes or Parquet values), ClickHouse,
    Postgres, or `output` (what was logged and printed)."""
    places: dict[str, list[str]] = {}
    files = file_texts(settings.home, settings.staging_dir)
    texts = {**clickhouse_texts(settings), **postgres_texts(pg), "output": output}
    for value in sorted(values):
        found = [f"{path} (bytes)" for path, (data, _) in files.items() if value.encode() in data]
        found += [f"{path} (values)" for path, (_, text) in files.items() if value in text]
        found += [place for place, text in texts.items() if value in text]
        if found:
            places[value] = found
    return places


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record logged, with its arguments and any traceback."""
    return "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records) + caplog.text


HOW = [
    pytest.param(LoadMode.BATCH, False, id="batch"),
    pytest.param(LoadMode.STREAM, False, id="stream"),
    pytest.param(LoadMode.STREAM, True, id="stream in small chunks"),
]
"""The CLI in each mode (each file one chunk), and the library in stream mode with the files cut into many chunks."""


@pytest.mark.parametrize(("mode", "small_chunks"), HOW)
def test_no_email_or_ip_is_kept_anywhere(
    settings: Settings,
    pg: psycopg.Connection,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    mode: LoadMode,
    small_chunks: bool,
) -> None:
    """A load of valid, repeated and quarantined lines, each with an email and an ip: none of them is kept."""
    caplog.set_level(logging.DEBUG)
    hand = write(tmp_path / "hand.jsonl", HAND_LINES)
    generated = tmp_path / "generated.jsonl"
    generate_file(generated, 3000, customers=3, users=40, seed=5)  # every defect, Faker emails and ips
    values = addresses(hand) | addresses(generated)
    assert {"pii.6@leak.example", "198.51.100.6", "pii.9@leak.example"} <= values
    assert len(values) == 2 * 9 + 2 * 40  # 9 hand-written lines' pairs, and the 40 users' Faker pairs

    if small_chunks:  # the hand-written file a line or two at a time; the generated one in 37 chunks
        output = ""
        quarantined = {
            **load_files(settings, [hand], mode, block_bytes=300).quarantined,
            **load_files(settings, [generated], mode, block_bytes=16_384).quarantined,
        }
    else:  # as a user runs it, with every diagnostic on
        result = run_cli("-vv", "events", "load", str(hand), str(generated), "--mode", mode.value, "--json")
        assert result.exit_code == 0, result.stderr
        output = result.stdout + result.stderr
        quarantined = json.loads(result.stdout)["quarantined"]
    # The lines with addresses went through the quarantine path too: its files exist and name them.
    assert {"bad JSON", "invalid event_type", "missing user_id", "unparseable fired_at"} <= set(quarantined)
    quarantine = pl.read_parquet(settings.staging_dir / "referral_quarantine" / "*.parquet")
    hand_lines = quarantine.filter(pl.col("source") == str(hand)).sort("line_number")["line_number"].to_list()
    assert hand_lines == HAND_QUARANTINED[mode]
    assert clickhouse.connect(settings).command("SELECT count() FROM referral_events") > 1000

    captured = capfd.readouterr()
    assert where_kept(settings, pg, values, output + captured.out + captured.err + logged(caplog)) == {}


def test_the_search_finds_an_address_wherever_it_is_kept(
    settings: Settings, pg: psycopg.Connection, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The search above can fail: an address kept in a zstd Parquet file, in a plain file, in ClickHouse, in
    Postgres or in a log line is found there."""
    caplog.set_level(logging.DEBUG)
    load_files(settings, [write(tmp_path / "hand.jsonl", HAND_LINES)])  # the tables and directories exist
    email, ip, other, logged_email = "pii.1@leak.example", "198.51.100.2", "pii.3@leak.example", "pii.4@leak.example"
    # Written as adpipe writes its parts (zstd, no statistics for strings): the bytes do not show the address.
    staged = settings.staging_dir / "referral_events" / "leak.parquet"
    pq.write_table(
        pa.table({"note": [f"{i}:{email}" for i in range(500)]}), staged, compression="zstd", write_statistics=False
    )
    assert email.encode() not in staged.read_bytes()
    (settings.staging_dir / "referral_quarantine" / "leak.txt").write_text(f"line 6: {ip}\n")
    client = clickhouse.connect(settings)
    client.command("CREATE TABLE leak (ip String) ENGINE = MergeTree ORDER BY ip")
    client.command(f"INSERT INTO leak VALUES ('{ip}')")
    pg.execute("CREATE TABLE referral.leak (email text)")
    pg.execute("INSERT INTO referral.leak VALUES (%s)", (other,))
    logging.getLogger("pipeline.referral.load").debug("read a line from %s", logged_email)

    assert where_kept(settings, pg, {email, ip, other, logged_email, "never@leak.example"}, logged(caplog)) == {
        email: [f"{staged} (values)"],
        ip: [f"{settings.staging_dir / 'referral_quarantine' / 'leak.txt'} (bytes)", "clickhouse leak"],
        other: ["postgres referral.leak"],
        logged_email: ["output"],
    }
