"""Referral events end to end on hand-built files: cleaning, the report rules, idempotency, file order,
both modes, and ClickHouse agreeing with Postgres. Expected numbers are worked out by hand below."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg
import pytest

from pipeline.config import Settings
from pipeline.errors import AdpipeError
from pipeline.referral import stream
from pipeline.referral.events import EVENT_SCHEMA
from pipeline.referral.load import LoadMode, load_files
from pipeline.referral.publish import read_reports, warehouse_hourly_reports, write_reports
from pipeline.referral.report import HOUR_KEY, hour_counts, related_flags, touched_hours
from pipeline.referral.staging import StagedPart, quarantine_reasons
from pipeline.referral.stream import StreamAggregator
from pipeline.storage import Store
from pipeline.warehouse import client as clickhouse

pytestmark = pytest.mark.warehouses  # each test that uses `settings` runs on chdb, http and server


def event(event_id: str, customer: int, user: int | None, fired_at: str, event_type: str) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "customer_id": customer,
            "user_id": user,
            "fired_at": fired_at,
            "event_type": event_type,
            "ip": "203.0.113.7",
            "email": "someone@example.com",
        }
    )


PL, CL = "ReferralPageLoad", "ReferralRecommendClick"
# Customer 1, 2022-01-05, window 300 s. Line numbers on the left.
LINES = [
    event("e1", 1, 1, "01/05/2022, 10:00:00", PL),  # 1
    event("e1", 1, 1, "01/05/2022, 10:00:00", PL),  # 2 duplicate of line 1
    event("e1", 1, 1, "01/05/2022, 10:02:00", CL),  # 3 related (same event_id)
    event("e2", 1, 2, "01/05/2022, 10:10:00", PL),  # 4
    event("x3", 1, 2, "01/05/2022, 10:15:00", CL),  # 5 related: exactly 300 s after line 4
    event("e4", 1, 3, "01/05/2022, 10:20:00", PL),  # 6
    event("x5", 1, 3, "01/05/2022, 10:25:01", CL),  # 7 not related: 301 s after line 6
    event("e8", 1, 6, "01/05/2022, 10:26:00", "EMPTY_VALUE"),  # 8 invalid type
    event("e11", 2, 1, "01/05/2022, 10:30:00", PL),  # 9 customer 2
    event("e11", 2, 1, "01/05/2022, 10:31:00", CL),  # 10 related
    event("e1", 2, 1, "01/05/2022, 10:32:00", CL),  # 11 e1's click again, under customer 2: a duplicate of line 3
    event("e12", 1, 1, "01/05/2022, 10:40:00", "FaqClick"),  # 12 valid, in no report
    event("x13", 1, 1, "01/05/2022, 10:45:00", CL),  # 13 not related: user 1's page load was 45 min ago
    event("e9", 1, None, "01/05/2022, 10:50:00", CL),  # 14 null user
    event("e10", 1, 7, "13/45/2022, 10:55:00", PL),  # 15 bad time
    '{"event_id": "e14", "customer_id": 1, "user_id": 8, "fired_at": ',  # 16 bad JSON
    event("e6", 1, 4, "01/05/2022, 10:58:00", PL),  # 17
    event("e6", 1, 4, "2022-01-05T11:05:00Z", CL),  # 18 related across the hour by event_id (7 min > window)
    event("x7", 1, 5, "2022-01-05T11:10:00", CL),  # 19 no page load at all
]
H10, H11 = datetime(2022, 1, 5, 10), datetime(2022, 1, 5, 11)
# customer_id, hour, page_loads, clicks, unique_user_clicks, related_clicks, ctr
EXPECTED = [
    (1, H10, 4, 4, 3, 2, 0.5),  # loads 1,4,6,17; clicks 3,5,7,13 by users 1,2,3,1; related 3,5
    (1, H11, 0, 2, 2, 1, None),  # clicks 18,19; related 18
    (2, H10, 1, 1, 1, 1, 1.0),  # load 9, click 10 (line 11 is a duplicate)
]
QUARANTINED = {"invalid event_type": 1, "missing user_id": 1, "unparseable fired_at": 1, "bad JSON": 1}


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def reports(settings: Settings) -> list[tuple]:
    from pipeline.source.postgres import connect

    with connect(settings) as conn:
        return read_reports(conn, None, None, None).rows()


def table_rows(pg: psycopg.Connection, table: str) -> list[tuple]:
    return pg.execute(f"SELECT * FROM referral.{table} ORDER BY customer_id, hour").fetchall()


@pytest.mark.parametrize("mode", [LoadMode.BATCH, LoadMode.STREAM])
def test_hand_built_file(settings: Settings, pg: psycopg.Connection, tmp_path: Path, mode: LoadMode) -> None:
    summary = load_files(settings, [write(tmp_path / "events.jsonl", LINES)], mode, 300, block_bytes=300)
    assert reports(settings) == EXPECTED
    assert summary.lines == 19
    assert summary.quarantined == QUARANTINED
    assert summary.duplicates == 2
    assert summary.valid == summary.staged == 13
    # Each report table as specified: one row per customer and hour with something to count.
    assert table_rows(pg, "page_loads") == [(1, H10, 4), (2, H10, 1)]
    assert table_rows(pg, "clicks") == [(1, H10, 4), (1, H11, 2), (2, H10, 1)]
    assert table_rows(pg, "unique_user_clicks") == [(1, H10, 3), (1, H11, 2), (2, H10, 1)]
    assert table_rows(pg, "click_through_rate") == [(1, H10, 4, 2, 0.5), (1, H11, 0, 1, None), (2, H10, 1, 1, 1.0)]
    quarantine = pl.read_parquet(settings.staging_dir / "referral_quarantine" / "*.parquet").sort("line_number")
    assert quarantine.select("line_number", "reason").rows() == [
        (8, "invalid event_type"),
        (14, "missing user_id"),
        (15, "unparseable fired_at"),
        (16, "bad JSON"),
    ]


def test_staging_and_clickhouse_hold_no_pii(settings: Settings, tmp_path: Path) -> None:
    load_files(settings, [write(tmp_path / "events.jsonl", LINES)])
    staged = pl.read_parquet(settings.staging_dir / "referral_events" / "**" / "*.parquet")
    assert staged.columns == ["event_id", "customer_id", "user_id", "fired_at", "event_type"]
    assert len(staged) == 13
    client = clickhouse.connect(settings)
    columns = [row[0] for row in client.query("DESCRIBE TABLE referral_events").result_rows]
    assert "email" not in columns and "ip" not in columns
    assert client.command("SELECT count() FROM referral_events") == 13


def test_clickhouse_sql_agrees_with_postgres(settings: Settings, tmp_path: Path) -> None:
    load_files(settings, [write(tmp_path / "events.jsonl", LINES)], window_seconds=300)
    from_clickhouse = warehouse_hourly_reports(clickhouse.connect(settings), timedelta(seconds=300))
    assert from_clickhouse.rows() == [row[:6] for row in EXPECTED]


def test_same_file_twice_changes_nothing(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "events.jsonl", LINES)
    load_files(settings, [path])
    parts = sorted((settings.staging_dir / "referral_events").rglob("*.parquet"))
    again = load_files(settings, [path], LoadMode.STREAM)
    assert again.staged == 0
    assert reports(settings) == EXPECTED
    assert sorted((settings.staging_dir / "referral_events").rglob("*.parquet")) == parts
    assert clickhouse.connect(settings).command("SELECT count() FROM referral_events") == 13


def test_a_failed_part_write_stops_the_load_and_the_next_load_completes_it(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts are written in their own thread: its error reaches the caller as it is, and nothing hangs."""
    from pipeline.referral import load as load_module

    real = load_module.write_events
    calls = []

    def fail_second(store: Store, events: pl.DataFrame) -> list[StagedPart]:
        calls.append(len(events))
        if len(calls) == 2:
            raise AdpipeError("cannot write part: disk full")
        return real(store, events)

    path = write(tmp_path / "events.jsonl", LINES)
    monkeypatch.setattr(load_module, "write_events", fail_second)
    with pytest.raises(AdpipeError, match="disk full"):
        load_files(settings, [path], LoadMode.STREAM, 300, block_bytes=300)
    assert reports(settings) == []  # the reports are written after the staging: none yet
    monkeypatch.setattr(load_module, "write_events", real)
    load_files(settings, [path], LoadMode.STREAM, 300, block_bytes=300)
    assert reports(settings) == EXPECTED


def test_reports_replaced_twice_in_a_callers_transaction(settings: Settings, pg: psycopg.Connection) -> None:
    """The second call replaces what the first wrote: its temp table is dropped even before the caller commits."""
    from pipeline.source.postgres import connect

    keys = pl.DataFrame({"customer_id": [2], "hour": [H10]})
    first = pl.DataFrame(
        {
            "customer_id": [2],
            "hour": [H10],
            "page_loads": [1],
            "clicks": [1],
            "unique_user_clicks": [1],
            "related_clicks": [1],
        }
    )
    second = first.with_columns(page_loads=pl.lit(3), clicks=pl.lit(0), unique_user_clicks=pl.lit(0))
    with connect(settings) as conn, conn.transaction():
        write_reports(conn, keys, first)
        write_reports(conn, keys, second)
    assert table_rows(pg, "page_loads") == [(2, H10, 3)]
    assert table_rows(pg, "clicks") == []
    assert table_rows(pg, "unique_user_clicks") == []
    assert table_rows(pg, "click_through_rate") == [(2, H10, 3, 1, 1 / 3)]


@pytest.mark.parametrize("order", ["loads first", "clicks first"])
def test_two_files_in_either_order(settings: Settings, tmp_path: Path, order: str) -> None:
    # Page loads (and the bad lines) in one file, clicks in the other: every related click needs the other file.
    loads = write(tmp_path / "loads.jsonl", [line for line in LINES if CL not in line])
    clicks = write(tmp_path / "clicks.jsonl", [line for line in LINES if CL in line] + [LINES[0]])
    files = [loads, clicks] if order == "loads first" else [clicks, loads]
    for path in files:
        load_files(settings, [path], LoadMode.STREAM)
    assert reports(settings) == EXPECTED


def test_two_files_in_one_load(settings: Settings, tmp_path: Path) -> None:
    loads = write(tmp_path / "loads.jsonl", [line for line in LINES if CL not in line])
    clicks = write(tmp_path / "clicks.jsonl", [line for line in LINES if CL in line])
    summary = load_files(settings, [clicks, loads], LoadMode.STREAM)
    assert reports(settings) == EXPECTED
    # The second file staged into the day the first one mirrored: the day is sent again, whole, after the reports.
    assert (summary.days, summary.days_mirrored) == (1, 0)
    client = clickhouse.connect(settings)
    assert client.command("SELECT count() FROM referral_events") == 13
    assert warehouse_hourly_reports(client, timedelta(seconds=300)).rows() == [row[:6] for row in EXPECTED]


def test_daily_files_loaded_one_after_the_other_in_stream_mode(settings: Settings, tmp_path: Path) -> None:
    # A page load and a related click every 20 minutes over two days, one file per day, read a few lines at a time:
    # most chunks of the second file are more than an hour past anything staged (this used to crash the load).
    def day_file(day: int) -> Path:
        lines = []
        for slot in range(72):
            at = datetime(2022, 1, day) + timedelta(minutes=20 * slot)
            lines += [
                event(f"d{day}s{slot}", 1, slot, at.strftime("%m/%d/%Y, %H:%M:%S"), PL),
                event(f"d{day}s{slot}", 1, slot, (at + timedelta(minutes=1)).strftime("%m/%d/%Y, %H:%M:%S"), CL),
            ]
        return write(tmp_path / f"day{day}.jsonl", lines)

    for day in (5, 6):
        summary = load_files(settings, [day_file(day)], LoadMode.STREAM, block_bytes=1000)
        assert (summary.valid, summary.staged) == (144, 144)
    rows = reports(settings)
    # 48 hours, each with 3 page loads and 3 related clicks by 3 users.
    assert len(rows) == 48
    assert {row[2:] for row in rows} == {(3, 3, 3, 3, 1.0)}
    assert clickhouse.connect(settings).command("SELECT count() FROM referral_events") == 288


def test_new_days_are_mirrored_to_clickhouse_as_they_are_staged(settings: Settings, tmp_path: Path) -> None:
    # Four page loads on each of three days; chunks of about two lines, so each day is staged in several parts.
    lines = [
        event(f"d{day}u{user}", 1, user, f"01/0{day}/2022, 1{user}:00:00", PL) for day in (5, 6, 7) for user in range(4)
    ]
    first = load_files(settings, [write(tmp_path / "days.jsonl", lines)], LoadMode.STREAM, block_bytes=300)
    assert (first.days, first.days_mirrored, first.clickhouse_rows) == (3, 3, 12)
    client = clickhouse.connect(settings)
    per_day = "SELECT toString(toDate(fired_at)), count() FROM referral_events GROUP BY 1 ORDER BY 1"
    assert client.query(per_day).result_rows == [("2022-01-05", 4), ("2022-01-06", 4), ("2022-01-07", 4)]

    # With the staging gone, the same days are new again: mirroring drops what ClickHouse held for them first.
    shutil.rmtree(settings.staging_dir)
    fewer = load_files(settings, [write(tmp_path / "fewer.jsonl", lines[:2] + lines[4:5])], LoadMode.STREAM)
    assert (fewer.days, fewer.days_mirrored, fewer.clickhouse_rows) == (2, 2, 3)
    assert client.query(per_day).result_rows == [("2022-01-05", 2), ("2022-01-06", 1), ("2022-01-07", 4)]

    # The first file again: 9 events are new. Days 5 and 6 held staged events, so they are sent whole after the
    # reports; day 7 is new to the staging, so it is mirrored (its 4 rows in ClickHouse replaced, not added to).
    again = load_files(settings, [tmp_path / "days.jsonl"], LoadMode.STREAM, block_bytes=300)
    assert (again.staged, again.days, again.days_mirrored, again.clickhouse_rows) == (9, 3, 1, 12)
    assert client.query(per_day).result_rows == [("2022-01-05", 4), ("2022-01-06", 4), ("2022-01-07", 4)]


def test_an_earlier_copy_loaded_into_the_day_before_replaces_the_staged_one_in_clickhouse_too(
    settings: Settings, tmp_path: Path
) -> None:
    """Each day is sent to ClickHouse as the reports count it: the click staged at 00:00:30 gives way to its copy at
    23:59 the day before, loaded later, in `referral_events` as in the reports."""
    load_files(settings, [write(tmp_path / "later.jsonl", [event("w", 8, 80, "2022-05-02T00:00:30Z", CL)])])
    load_files(settings, [write(tmp_path / "earlier.jsonl", [event("w", 8, 80, "2022-05-01T23:59:00Z", CL)])])
    hour = datetime(2022, 5, 1, 23)
    assert reports(settings) == [(8, hour, 0, 1, 1, 0, None)]
    client = clickhouse.connect(settings)
    held = client.query("SELECT event_id, toString(toStartOfMinute(fired_at)) FROM referral_events").result_rows
    assert held == [("w", "2022-05-01 23:59:00")]
    assert warehouse_hourly_reports(client, timedelta(seconds=300)).rows() == [(8, hour, 0, 1, 1, 0)]


def test_a_file_loaded_again_after_it_grew_counts_its_quarantined_lines_once(
    settings: Settings, tmp_path: Path
) -> None:
    """A log appended to and loaded again replaces its quarantine; a new file at the same path (rotated) adds one."""
    path = write(tmp_path / "app.jsonl", [LINES[0], LINES[7], LINES[15]])  # a page load, an invalid type, bad JSON
    load_files(settings, [path])
    path.touch()
    load_files(settings, [path])
    with path.open("a") as log:
        log.write(LINES[3] + "\n")
    load_files(settings, [path])
    assert quarantine_reasons(settings.staging_dir) == {"bad JSON": 1, "invalid event_type": 1}
    write(path, [LINES[8], LINES[15]])  # rotated: other lines under the same name
    load_files(settings, [path])
    assert quarantine_reasons(settings.staging_dir) == {"bad JSON": 2, "invalid event_type": 1}


def test_touched_hours_are_the_events_hours_and_the_hour_after_a_page_load() -> None:
    events = pl.DataFrame(
        {
            "customer_id": [1, 1, 2, 3],
            "fired_at": [
                datetime(2022, 1, 5, 10, 59, 59),
                datetime(2022, 1, 5, 12),
                datetime(2022, 1, 5, 11, 30),
                datetime(2022, 1, 5, 23, 10),
            ],
            "event_type": [PL, CL, CL, PL],
        }
    )
    touched = touched_hours(hour_counts(events)).sort(HOUR_KEY).rows()
    # Customer 1: the page load's hour and the next; the click's hour. Customer 2: a click touches its hour only.
    # Customer 3: a page load at 23:10 reaches into the next day.
    assert touched == [
        (1, datetime(2022, 1, 5, 10)),
        (1, datetime(2022, 1, 5, 11)),
        (1, datetime(2022, 1, 5, 12)),
        (2, datetime(2022, 1, 5, 11)),
        (3, datetime(2022, 1, 5, 23)),
        (3, datetime(2022, 1, 6, 0)),
    ]


@pytest.mark.parametrize("big", [False, True], ids=["ids packed", "ids too large to pack"])
def test_related_flags_match_users_exactly(big: bool) -> None:
    # related_flags packs (customer_id, user_id) into one integer when the ids allow it; user 2^32 of customer 0
    # would collide with user 0 of customer 1 under a careless packing.
    user = 2**32 if big else 7

    def frame(rows: list[tuple[int, int, str, str]]) -> pl.DataFrame:
        return pl.DataFrame(rows, schema=["customer_id", "user_id", "event_id", "fired_at"], orient="row").with_columns(
            pl.col("fired_at").str.strptime(pl.Datetime("us"), "%H:%M:%S")
        )

    loads = frame([(1, 0, "a", "10:00:00"), (0, user, "b", "09:40:00")])
    clicks = frame(
        [
            (1, 0, "x", "10:05:00"),  # related: exactly the window after (1, 0)'s page load
            (0, user, "y", "10:03:00"),  # not related: its own page load is 23 min old; (1, 0)'s is not its own
            (0, user, "b", "10:30:00"),  # related by event_id
            (0, 0, "z", "10:01:00"),  # not related: no page load of (0, 0)
            (1, user, "a", "10:01:00"),  # not related: "a" is another user's page load
        ]
    )
    assert related_flags(clicks, loads, timedelta(seconds=300)).to_list() == [True, False, True, False, False]


def test_stream_dedup_stays_exact_when_key_hashes_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every key hashing alike makes every event a possible repeat of the earlier chunk's: only the keys may decide.
    monkeypatch.setattr(stream, "key_hash", lambda: pl.lit(0, dtype=pl.UInt64))

    def chunk(rows: list[tuple[str, str, str]], first_line: int) -> pl.DataFrame:
        return pl.DataFrame(
            [(event_id, 1, 1, datetime(2022, 1, 5, 10, minute), event_type) for event_id, event_type, minute in rows],
            schema=EVENT_SCHEMA,
            orient="row",
        ).with_row_index("line_number", offset=first_line)

    aggregator = StreamAggregator(timedelta(seconds=300))
    aggregator.push(chunk([("e1", PL, 0), ("e2", PL, 1)], 1))
    kept = aggregator.push(chunk([("e1", PL, 2), ("e1", CL, 3), ("e3", PL, 4)], 3)).kept
    assert kept.select("event_id", "event_type").rows() == [("e1", CL), ("e3", PL)]
    assert aggregator.duplicates == 1


def test_empty_file(settings: Settings, tmp_path: Path) -> None:
    summary = load_files(settings, [write(tmp_path / "empty.jsonl", [])])
    assert (summary.lines, summary.staged, summary.hours) == (0, 0, 0)
    assert reports(settings) == []


def test_bad_input_fails_before_writing(settings: Settings, tmp_path: Path) -> None:
    good = write(tmp_path / "events.jsonl", LINES)
    with pytest.raises(AdpipeError, match=r"missing\.jsonl: no such file"):
        load_files(settings, [good, tmp_path / "missing.jsonl"])
    with pytest.raises(AdpipeError, match="not a file"):
        load_files(settings, [tmp_path])
    with pytest.raises(AdpipeError, match="--window must be between 0 and 3600 seconds, got -1"):
        load_files(settings, [good], window_seconds=-1)
    assert not (settings.staging_dir / "referral_events").exists()


def test_batch_and_stream_give_identical_reports(settings: Settings, pg: psycopg.Connection, tmp_path: Path) -> None:
    from pipeline.referral.generate import generate_file

    path = tmp_path / "generated.jsonl"
    generate_file(path, 20_000, customers=4, users=300, seed=11)  # ~1.4 h of events, with every defect
    batch = load_files(settings, [path], LoadMode.BATCH, 120)
    in_batch = reports(settings)
    shutil.rmtree(settings.staging_dir)
    pg.execute(
        "TRUNCATE referral.page_loads, referral.clicks, referral.unique_user_clicks, referral.click_through_rate"
    )
    stream = load_files(settings, [path], LoadMode.STREAM, 120, block_bytes=64 * 1024)  # ~50 chunks
    assert reports(settings) == in_batch
    assert stream.hours_from_stream == len(in_batch) == 8  # from the stream aggregates, not a recomputation
    assert stream.quarantined == batch.quarantined  # nothing late in a time-ordered file
    assert (stream.valid, stream.duplicates) == (batch.valid, batch.duplicates)
    assert sum(row[5] for row in in_batch) > 0  # some related clicks


def test_stream_quarantines_late_events(settings: Settings, tmp_path: Path) -> None:
    lines = [
        event("a", 1, 1, "01/05/2022, 10:00:00", PL),
        event("b", 1, 2, "01/05/2022, 10:30:00", PL),
        event("b", 1, 2, "01/05/2022, 10:31:00", CL),
        event("c", 1, 3, "01/05/2022, 10:20:59", PL),  # 10 min 1 s behind the newest event: late
        event("d", 1, 3, "01/05/2022, 10:21:00", PL),  # exactly the 10 min tolerance: on time
    ]
    summary = load_files(settings, [write(tmp_path / "late.jsonl", lines)], LoadMode.STREAM, block_bytes=200)
    assert summary.quarantined == {"late": 1}
    assert reports(settings) == [(1, H10, 3, 1, 1, 1, 1 / 3)]


def test_one_load_at_a_time(settings: Settings, tmp_path: Path) -> None:
    import os

    from pipeline.locks import acquire_lock

    fd = acquire_lock(settings.home / "events-load.lock", "events load")
    try:
        with pytest.raises(AdpipeError, match="events load is busy"):
            load_files(settings, [write(tmp_path / "events.jsonl", LINES)])
    finally:
        os.close(fd)
    assert load_files(settings, [tmp_path / "events.jsonl"]).staged == 13


def test_a_staging_directory_another_home_staged_events_in_is_refused(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An events load drops the events already staged and recomputes its hours from them: from another home's
    staging directory it would count that home's events as its own. It stops in one line, before writing."""
    from tests.conftest import run_cli

    path = write(tmp_path / "events.jsonl", LINES)
    load_files(settings, [path])
    marker = settings.staging_dir / "adpipe-home.json"
    assert json.loads(marker.read_text())["home"] == str(settings.home.absolute())
    staged = sorted(settings.staging_dir.rglob("*"))
    monkeypatch.setenv("ADPIPE_HOME", str(tmp_path / "another-home"))
    result = run_cli("events", "load", str(path))
    assert (result.exit_code, result.stderr) == (
        1,
        f"error: ADPIPE_STAGING_DIR {settings.staging_dir} holds the staged runs of another ADPIPE_HOME"
        f" ({settings.home.absolute()}): give each home a staging directory of its own; if that home is this one,"
        f" moved without its home_id.json, delete {marker} to take its runs over\n",
    )
    assert sorted(settings.staging_dir.rglob("*")) == staged
    assert reports(settings) == EXPECTED
