"""`adpipe events …` as a user runs it: generate, load (--json, both modes), report formats, clear errors."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg
import pytest

from pipeline.config import Settings
from pipeline.referral.publish import warehouse_hourly_reports
from pipeline.warehouse import client as clickhouse
from tests.conftest import run_cli
from tests.test_events_load import LINES, reports, write


def test_generate_load_and_report(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    generated = run_cli(
        "events", "generate", "--out", str(out), "--events", "3000", "--customers", "3", "--users", "40", "--seed", "5"
    )
    assert generated.exit_code == 0, generated.stderr
    assert "Wrote 3,000 lines" in generated.stdout
    assert len(out.read_text().splitlines()) == 3000

    loaded = run_cli("events", "load", str(out), "--mode", "stream", "--json")
    assert loaded.exit_code == 0, loaded.stderr
    summary = json.loads(loaded.stdout)
    assert summary["lines"] == 3000
    # Every line is accounted for: staged, dropped as a repeat, or quarantined with a reason.
    assert summary["valid"] + summary["duplicates"] + sum(summary["quarantined"].values()) == 3000
    assert set(summary["quarantined"]) == {
        "bad JSON",
        "invalid event_type",
        "missing customer_id",
        "missing user_id",
        "unparseable fired_at",
    }
    assert summary["duplicates"] > 0

    as_csv = run_cli("events", "report", "--format", "csv", "--customer", "2")
    assert as_csv.exit_code == 0, as_csv.stderr
    header, *rows = as_csv.stdout.splitlines()
    assert header == "customer_id,hour,page_loads,clicks,unique_user_clicks,related_clicks,ctr"
    assert rows and all(row.startswith("2,") for row in rows)
    # What ClickHouse computes from the events it holds is what Postgres holds.
    from_clickhouse = warehouse_hourly_reports(clickhouse.connect(settings), timedelta(minutes=5))
    assert from_clickhouse.rows() == [row[:6] for row in reports(settings)]


def test_report_formats_and_filters(settings: Settings, tmp_path: Path) -> None:
    assert run_cli("events", "load", str(write(tmp_path / "e.jsonl", LINES))).exit_code == 0
    as_json = run_cli("events", "report", "--format", "json", "--from", "2022-01-05T11:00:00")
    assert as_json.exit_code == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [
        {
            "customer_id": 1,
            "hour": "2022-01-05T11:00:00",
            "page_loads": 0,
            "clicks": 2,
            "unique_user_clicks": 2,
            "related_clicks": 1,
            "ctr": None,
        }
    ]
    out = tmp_path / "report.parquet"
    assert run_cli("events", "report", "--from", "2022-01-05T11:00:00", "--out", str(out)).exit_code == 0
    assert pl.read_parquet(out).select("clicks", "related_clicks").rows() == [(2, 1)]
    table = run_cli("events", "report", "--to", "2022-01-05T11:00:00")
    assert table.exit_code == 0, table.stderr
    assert "0.5000" in table.stdout and "1.0000" in table.stdout
    assert "2022-01-05 10:00" in table.stdout and "2022-01-05 11:00" not in table.stdout


def test_load_summary_table(settings: Settings, tmp_path: Path) -> None:
    result = run_cli("events", "load", str(write(tmp_path / "e.jsonl", LINES)), "--window", "300")
    assert result.exit_code == 0, result.stderr
    assert "quarantined: bad JSON" in result.stdout
    assert "duplicates dropped" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["events", "load", "nowhere.jsonl"], "nowhere.jsonl: no such file"),
        (["events", "load", "."], ": not a file"),
        (["events", "load", "x.jsonl", "--window", "4000"], "--window must be between 0 and 3600 seconds, got 4000"),
        (["events", "report", "--from", "2022-01-06", "--to", "2022-01-05"], "must be before --to"),
        (["events", "generate", "--out", "g.jsonl", "--customers", "0"], "--customers must be 1 or more, got 0"),
    ],
)
def test_bad_input_is_one_line(settings: Settings, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "x.jsonl").write_text("")
    result = run_cli(*args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (settings.staging_dir / "referral_events").exists()


def test_unreachable_postgres(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADPIPE_POSTGRES_URL", "postgresql://adpipe:s3cret@127.0.0.1:1/nowhere")
    result = run_cli("events", "load", str(write(tmp_path / "e.jsonl", LINES)))
    assert result.exit_code == 1
    assert "cannot reach Postgres at postgresql://adpipe:***@127.0.0.1:1/nowhere" in result.stderr
    assert not (settings.staging_dir / "referral_events").exists()


def test_source_schema_still_applied_with_referral(pg: psycopg.Connection) -> None:
    tables = {
        row[0]
        for row in pg.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema IN ('public', 'referral')"
        ).fetchall()
    }
    assert {"public.advertiser", "public.clicks", "referral.page_loads", "referral.click_through_rate"} <= tables


def test_referral_schema_added_to_an_existing_source_database(settings: Settings, pg: psycopg.Connection) -> None:
    from pipeline.source.postgres import connect

    pg.execute("INSERT INTO advertiser (name) VALUES ('kept')")
    pg.execute("DROP SCHEMA referral CASCADE")  # a database from before this feature: V1 only
    with connect(settings) as conn:
        assert conn.execute("SELECT to_regclass('referral.clicks') IS NOT NULL").fetchone()[0]
        assert conn.execute("SELECT name FROM advertiser").fetchall() == [("kept",)]


def test_events_the_warehouse_cannot_date_are_quarantined_and_the_rest_load(settings: Settings, tmp_path: Path) -> None:
    """ClickHouse partitions the events by day and the reports count hours: a time outside 1970-01-01 to 2106-02-07
    would land on another day (1960 on 2139-06-07), and year 1 failed the load."""
    times = ["0001-01-01T00:00:00Z", "1960-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "2400-01-01T00:00:00Z"]
    lines = [
        json.dumps(
            {"event_id": f"e{n}", "customer_id": 1, "user_id": 1, "fired_at": at, "event_type": "ReferralPageLoad"}
        )
        for n, at in enumerate(times)
    ]
    result = run_cli("events", "load", str(write(tmp_path / "e.jsonl", lines)), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["valid"], summary["quarantined"]) == (1, {"fired_at out of range": 3})
    assert [row[:3] for row in reports(settings)] == [(1, datetime(1970, 1, 1), 1)]
