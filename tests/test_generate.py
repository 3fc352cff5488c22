"""The data generator's commands against the real embedded Postgres: counts, shapes, reproducibility, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from pipeline.catalog import SOURCE_TABLES
from pipeline.config import Settings
from pipeline.source import generate
from pipeline.source.postgres import EmbeddedPostgres
from tests.conftest import run_cli, server_directory
from tests.harness import refused_port

NOW = "2026-11-20T12:00:00"
NOW_DT = datetime(2026, 11, 20, 12, 0, 0)


def counts(pg: psycopg.Connection) -> dict[str, int]:
    return {table: pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in SOURCE_TABLES}


def fingerprint(pg: psycopg.Connection) -> dict[str, tuple[int, int | None, int | None]]:
    """Rows, max id and the id sequence's last value per table.

    The sequence also moves for an insert that was rolled back: an unchanged fingerprint shows the
    input was refused before anything was written, not just that the transaction was undone.
    """
    return {
        table: pg.execute(
            f"SELECT count(*), max(id), (SELECT last_value FROM pg_sequences WHERE sequencename = '{table}_id_seq') "
            f"FROM {table}"
        ).fetchone()
        for table in SOURCE_TABLES
    }


def ok(*args: str) -> str:
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def table_rows(stdout: str) -> dict[str, list[str]]:
    """A rich table's body rows, keyed by their first cell."""
    rows = {}
    for line in stdout.splitlines():
        if line.count("│") > 2:
            cells = [cell.strip() for cell in line.split("│")[1:-1]]
            rows[cells[0]] = cells[1:]
    return rows


def test_batch_creates_exact_counts(settings: Settings, pg: psycopg.Connection) -> None:
    out = ok("batch", "--advertisers", "2", "--campaigns", "3", "--impressions", "1000", "--ctr", "0.08", "--seed", "1")
    # 2 × 3 campaigns, × 1000 impressions, 8% of each campaign's 1000 impressions clicked.
    assert "Created 2 advertisers, 6 campaigns, 6,000 impressions, 480 clicks." in out
    assert counts(pg) == {"advertiser": 2, "campaign": 6, "impressions": 6000, "clicks": 480}
    per_advertiser = pg.execute("SELECT advertiser_id, count(*) FROM campaign GROUP BY 1 ORDER BY 1").fetchall()
    assert per_advertiser == [(1, 3), (2, 3)]
    per_campaign = pg.execute(
        "SELECT c.id, (SELECT count(*) FROM impressions i WHERE i.campaign_id = c.id), "
        "(SELECT count(*) FROM clicks k WHERE k.campaign_id = c.id) FROM campaign c ORDER BY c.id"
    ).fetchall()
    assert per_campaign == [(campaign, 1000, 80) for campaign in range(1, 7)]


def test_single_commands_create_exact_counts(settings: Settings, pg: psycopg.Connection) -> None:
    assert "Created 3 advertisers (ids 1-3)." in ok("advertisers", "--count", "3")
    assert "Created 4 campaigns for advertiser 2 (ids 1-4)." in ok("campaigns", "--advertiser-id", "2", "--count", "4")
    assert "Created 500 impressions for campaign 3." in ok("impressions", "--campaign-id", "3", "--count", "500")
    assert "Created 50 clicks for campaign 3." in ok("clicks", "--campaign-id", "3", "--ratio", "0.1")
    assert counts(pg) == {"advertiser": 3, "campaign": 4, "impressions": 500, "clicks": 50}
    assert pg.execute("SELECT DISTINCT advertiser_id FROM campaign").fetchall() == [(2,)]
    assert pg.execute("SELECT DISTINCT campaign_id FROM impressions").fetchall() == [(3,)]
    assert pg.execute("SELECT DISTINCT campaign_id FROM clicks").fetchall() == [(3,)]
    assert "Created 0 advertisers." in ok("advertisers", "--count", "0")


def test_clicks_skip_impressions_without_a_time(settings: Settings, pg: psycopg.Connection) -> None:
    ok("batch", "--advertisers", "1", "--campaigns", "1", "--impressions", "9", "--ctr", "0")
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (1, NULL)")  # the schema allows it
    assert "Created 9 clicks for campaign 1." in ok("clicks", "--campaign-id", "1", "--ratio", "1")
    assert pg.execute(CLICKS_WITHOUT_IMPRESSION).fetchone() == (0,)


def test_realised_ctr_over_10k_impressions(settings: Settings, pg: psycopg.Connection) -> None:
    ok("batch", "--advertisers", "1", "--campaigns", "1", "--impressions", "10000", "--ctr", "0.05")
    clicks, impressions = pg.execute(
        "SELECT (SELECT count(*) FROM clicks), (SELECT count(*) FROM impressions)"
    ).fetchone()
    assert impressions == 10_000
    assert abs(clicks / impressions - 0.05) <= 0.02
    assert clicks == 500  # the generator picks exactly round(ctr × impressions) impressions


CLICKS_WITHOUT_IMPRESSION = """
SELECT count(*) FROM clicks k
WHERE NOT EXISTS (
    SELECT 1 FROM impressions i
    WHERE i.campaign_id = k.campaign_id
      AND k.created_at - i.created_at BETWEEN interval '1 second' AND interval '120 seconds'
)
"""


def test_every_click_follows_an_impression_of_its_campaign(settings: Settings, pg: psycopg.Connection) -> None:
    ok("batch", "--advertisers", "2", "--campaigns", "2", "--impressions", "2000", "--ctr", "0.2", "--seed", "3")
    ok("impressions", "--campaign-id", "1", "--count", "1000")
    ok("clicks", "--campaign-id", "1", "--ratio", "0.3")
    assert counts(pg)["clicks"] == 4 * 400 + 900  # campaign 1 now has 3000 impressions
    assert pg.execute(CLICKS_WITHOUT_IMPRESSION).fetchone() == (0,)
    # The check itself finds a click with no impression 1–120 s before it.
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (1, '2000-01-01')")
    assert pg.execute(CLICKS_WITHOUT_IMPRESSION).fetchone() == (1,)


def test_chunks_add_up_to_exact_counts(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts above the chunk size are written in several chunks; totals and click shapes stay exact."""
    monkeypatch.setattr(generate, "CHUNK_ROWS", 300)
    assert "1,000 impressions, 70 clicks" in ok(
        "batch", "--advertisers", "1", "--campaigns", "1", "--impressions", "1000", "--ctr", "0.07"
    )
    ok("impressions", "--campaign-id", "1", "--count", "650")
    # 1650 impressions (chunks of 300, 300, 300, 100 then 300, 300, 50), 30% of them clicked.
    assert "Created 495 clicks for campaign 1." in ok("clicks", "--campaign-id", "1", "--ratio", "0.3")
    assert counts(pg) == {"advertiser": 1, "campaign": 1, "impressions": 1650, "clicks": 565}
    assert pg.execute(CLICKS_WITHOUT_IMPRESSION).fetchone() == (0,)


def test_times_are_within_the_last_seven_days(settings: Settings, pg: psycopg.Connection) -> None:
    before = datetime.now(UTC).replace(tzinfo=None)
    ok("batch", "--advertisers", "1", "--campaigns", "2", "--impressions", "3000")
    after = datetime.now(UTC).replace(tzinfo=None)
    low, high = pg.execute("SELECT min(created_at), max(created_at) FROM impressions").fetchone()
    assert before - timedelta(days=7) <= low and high <= after
    ok("batch", "--advertisers", "1", "--campaigns", "1", "--impressions", "3000", "--now", NOW)
    low, high = pg.execute("SELECT min(created_at), max(created_at) FROM impressions WHERE campaign_id = 3").fetchone()
    assert NOW_DT - timedelta(days=7) <= low and high <= NOW_DT
    # 3000 uniform draws over 7 days reach both ends: within half a day of each.
    assert low < NOW_DT - timedelta(days=6.5) and high > NOW_DT - timedelta(days=0.5)
    created = pg.execute("SELECT DISTINCT created_at FROM advertiser WHERE id = 2").fetchall()
    assert created == [(NOW_DT,)]


def test_campaign_shapes(settings: Settings, pg: psycopg.Connection) -> None:
    ok("batch", "--advertisers", "2", "--campaigns", "100", "--impressions", "0", "--now", NOW, "--seed", "5")
    bid_low, bid_high, budget_low, budget_high, flight_low, flight_high, start_low, start_high = pg.execute(
        "SELECT min(bid), max(bid), min(budget), max(budget), min(end_date - start_date), max(end_date - start_date), "
        "min(start_date), max(start_date) FROM campaign"
    ).fetchone()
    assert Decimal("0.50") <= bid_low and bid_high <= Decimal("5.00")
    assert Decimal("50") <= budget_low and budget_high <= Decimal("500")
    assert flight_low >= 7 and flight_high <= 30
    assert date(2026, 11, 6) <= start_low and start_high <= date(2026, 11, 20)  # started in the last 14 days
    # 200 draws spread over the ranges (not all one value).
    assert bid_high - bid_low > 3 and budget_high - budget_low > 300 and flight_high - flight_low > 15


@pytest.fixture
def second_database(settings: Settings, pg_server_url: str) -> Iterator[str]:
    """The URL of another empty database on the same server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_server_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


ALL_ROWS = {
    "advertiser": "SELECT * FROM advertiser ORDER BY id",
    "campaign": "SELECT * FROM campaign ORDER BY id",
    "impressions": "SELECT * FROM impressions ORDER BY id",
    "clicks": "SELECT * FROM clicks ORDER BY id",
}


def generate_and_dump(url: str, monkeypatch: pytest.MonkeyPatch, seed: str) -> dict[str, list[tuple]]:
    monkeypatch.setenv("ADPIPE_POSTGRES_URL", url)
    ok("batch", "--advertisers", "2", "--campaigns", "2", "--impressions", "300", "--seed", seed, "--now", NOW)
    ok("campaigns", "--advertiser-id", "1", "--count", "2", "--seed", seed, "--now", NOW)
    ok("impressions", "--campaign-id", "5", "--count", "100", "--seed", seed, "--now", NOW)
    ok("clicks", "--campaign-id", "5", "--ratio", "0.5", "--seed", seed)
    with psycopg.connect(url) as conn:
        return {table: conn.execute(sql).fetchall() for table, sql in ALL_ROWS.items()}


def test_seed_and_now_reproduce_identical_rows(
    settings: Settings, second_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = generate_and_dump(os.environ["ADPIPE_POSTGRES_URL"], monkeypatch, "42")
    second = generate_and_dump(second_database, monkeypatch, "42")
    # 4 batch campaigns × round(0.08 × 300) clicks, and half of campaign 5's 100 impressions.
    assert [len(first[t]) for t in ALL_ROWS] == [2, 6, 1300, 4 * 24 + 50]
    assert first == second
    with psycopg.connect(second_database) as conn:
        generate.reset(conn)
    assert generate_and_dump(second_database, monkeypatch, "43") != first


def test_reset_yes_empties_every_table_and_restarts_ids(settings: Settings, pg: psycopg.Connection) -> None:
    ok("batch", "--advertisers", "2", "--campaigns", "2", "--impressions", "100")
    assert "Emptied advertiser, campaign, impressions and clicks." in ok("reset", "--yes")
    assert counts(pg) == {"advertiser": 0, "campaign": 0, "impressions": 0, "clicks": 0}
    assert "(ids 1-1)" in ok("advertisers")


def test_reset_asks_and_no_changes_nothing(settings: Settings, pg: psycopg.Connection) -> None:
    ok("batch", "--advertisers", "1", "--campaigns", "2", "--impressions", "100")
    before = fingerprint(pg)
    result = run_cli("reset", input="n\n")
    assert result.exit_code == 1
    assert result.stderr == "error: not confirmed: nothing was changed\n"
    assert "Delete every row of advertiser, campaign, impressions and clicks? [y/N]" in result.stdout
    assert "Emptied" not in result.stdout
    assert fingerprint(pg) == before
    assert run_cli("reset", input="y\n").exit_code == 0
    assert counts(pg)["impressions"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["impressions", "--campaign-id", "99"], "--campaign-id 99: no campaign with that id"),
        (["clicks", "--campaign-id", "99"], "--campaign-id 99: no campaign with that id"),
        (["campaigns", "--advertiser-id", "99"], "--advertiser-id 99: no advertiser with that id"),
        (["advertisers", "--count", "-1"], "--count must be zero or more, got -1"),
        (["campaigns", "--advertiser-id", "1", "--count", "-3"], "--count must be zero or more, got -3"),
        (["impressions", "--campaign-id", "1", "--count", "-5"], "--count must be zero or more, got -5"),
        (["batch", "--advertisers", "-1"], "--advertisers must be zero or more, got -1"),
        (["batch", "--campaigns", "-2"], "--campaigns must be zero or more, got -2"),
        (["batch", "--impressions", "-1000"], "--impressions must be zero or more, got -1000"),
        (["batch", "--ctr", "1.5"], "--ctr must be between 0 and 1, got 1.5"),
        (["batch", "--ctr", "-0.1"], "--ctr must be between 0 and 1, got -0.1"),
        (["clicks", "--campaign-id", "1", "--ratio", "2"], "--ratio must be between 0 and 1, got 2.0"),
        # The rows are dated around --now: year 1 would write dates before the common era, 9999 past the calendar.
        (["batch", "--now", "0001-01-01"], "--now must be between 1970-02-01 and 2149-05-01, got 0001-01-01 00:00:00"),
        (["campaigns", "--advertiser-id", "1", "--now", "9999-12-30"], "--now must be between 1970-02-01 and"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    settings: Settings, pg: psycopg.Connection, args: list[str], message: str
) -> None:
    ok("batch", "--advertisers", "1", "--campaigns", "1", "--impressions", "50")
    before = fingerprint(pg)
    result = run_cli(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stdout
    assert fingerprint(pg) == before


@pytest.mark.parametrize("args", [["batch", "--seed", "-1"], ["advertisers", "--seed", "-1"]])
def test_a_negative_seed_is_refused_as_the_command_line_is_parsed(
    settings: Settings, pg: psycopg.Connection, args: list[str]
) -> None:
    before = fingerprint(pg)
    result = run_cli(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: Invalid value for '--seed': -1 is not in the range x>=0.")
    assert fingerprint(pg) == before


@pytest.mark.parametrize(
    "args",
    [
        ["batch"],
        ["advertisers"],
        ["campaigns", "--advertiser-id", "1"],
        ["impressions", "--campaign-id", "1"],
        ["clicks", "--campaign-id", "1"],
        ["stats"],
        ["reset", "--yes"],
    ],
)
def test_unreachable_postgres_is_one_line_and_changes_nothing(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    ok("batch", "--advertisers", "1", "--campaigns", "1", "--impressions", "50")
    before = fingerprint(pg)
    with refused_port() as port:
        monkeypatch.setenv("ADPIPE_POSTGRES_URL", f"postgresql://adpipe:s3cret@127.0.0.1:{port}/ads")
        result = run_cli(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach Postgres at postgresql://adpipe:***@127.0.0.1:{port}/ads: ")
    assert result.stderr.count("\n") == 1
    assert "s3cret" not in result.stderr
    assert fingerprint(pg) == before


def test_stats_shows_ranges_and_quarantine(settings: Settings, pg: psycopg.Connection) -> None:
    pg.execute(
        "INSERT INTO advertiser (name, created_at) VALUES "
        "('Acme', '2026-11-01 09:00:00'), ('Globex', '2026-11-02 10:30:00.250000')"
    )
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id, created_at) VALUES "
        "('Spring', 1.50, 100, '2026-11-01', '2026-11-30', 1, '2026-11-03 08:00:00'), "
        "('Broken', 0, 100, '2026-11-01', '2026-11-30', 2, '2026-11-04 08:00:00')"
    )
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at) VALUES (1, '2026-11-20 10:00:00'), "
        "(NULL, '2026-11-20 11:00:00'), (1, '2026-11-21 00:00:00.000001')"
    )
    rows = table_rows(ok("stats"))
    # Rows, Min id, Max id, First created_at, Last created_at, Quarantined (no sync yet: 0)
    assert rows["advertiser"] == ["2", "1", "2", "2026-11-01 09:00:00", "2026-11-02 10:30:00.250000", "0"]
    assert rows["campaign"] == ["2", "1", "2", "2026-11-03 08:00:00", "2026-11-04 08:00:00", "0"]
    assert rows["impressions"] == ["3", "1", "3", "2026-11-20 10:00:00", "2026-11-21 00:00:00.000001", "0"]
    assert rows["clicks"] == ["0", "-", "-", "-", "-", "0"]

    ok("sync", "--mode", "full")
    rows = table_rows(ok("stats"))
    # Campaign 2 has bid 0; impression 2 has no campaign.
    assert [rows[t][-1] for t in SOURCE_TABLES] == ["0", "1", "1", "0"]

    # Fixed in the source: the next incremental sync resolves its quarantine entry.
    pg.execute("UPDATE campaign SET bid = 0.80 WHERE id = 2")
    ok("sync")
    rows = table_rows(ok("stats"))
    assert [rows[t][-1] for t in SOURCE_TABLES] == ["0", "0", "1", "0"]
    # The warehouse agrees (status reads ClickHouse's quarantine table).
    status = table_rows(ok("status"))
    assert [status[t][-1] for t in SOURCE_TABLES] == ["0", "0", "1", "0"]


def test_stats_quarantine_comes_from_the_committed_state(settings: Settings, pg: psycopg.Connection) -> None:
    """The count is the committed sync's (its state file), whatever ClickHouse holds; a state written before the
    counts were kept (format 0) is counted from the staged quarantine parts instead."""
    from pipeline.sync.state import STATE_FILE
    from pipeline.warehouse import client as clickhouse

    pg.execute("INSERT INTO advertiser (name) VALUES ('')")  # empty name: quarantined
    ok("sync", "--mode", "full")
    clickhouse.connect(settings).command("TRUNCATE TABLE quarantine")
    assert table_rows(ok("stats"))["advertiser"][-1] == "1"
    state_file = settings.home / STATE_FILE
    state = json.loads(state_file.read_text())
    assert (state["format"], state["quarantined"]) == (2, {"advertiser": 1})
    del state["format"], state["quarantined"]
    state_file.write_text(json.dumps(state))
    assert table_rows(ok("stats"))["advertiser"][-1] == "1"  # from the staged part
    settings.staging_dir.rename(settings.staging_dir.with_name("moved"))
    assert table_rows(ok("stats"))["advertiser"][-1] == "0"


def adpipe(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`adpipe ARGS` in a new process using the embedded Postgres under `home` (no server URL configured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADPIPE_", "POSTGRES_"))}
    env |= {"ADPIPE_HOME": str(home), "ADPIPE_STAGING_DIR": str(home / "staging")}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def test_embedded_server_serves_commands_and_down_stops_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = EmbeddedPostgres(home / "postgres")
    try:
        first = adpipe(home, "advertisers", "--count", "2")
        assert first.returncode == 0, first.stderr
        assert "Created 2 advertisers (ids 1-2)." in first.stdout
        port = server.running_port()
        assert port is not None
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SHOW shared_buffers").fetchone() == ("512MB",)
        second = adpipe(home, "stats")
        assert second.returncode == 0, second.stderr
        assert table_rows(second.stdout)["advertiser"][:3] == ["2", "1", "2"]
        assert server.running_port() == port  # the same server, still up between commands

        stopped = adpipe(home, "down")
        assert stopped.returncode == 0, stopped.stderr
        assert f"Stopped the embedded Postgres in {home / 'postgres'}." in stopped.stdout
        assert first.stderr == second.stderr == stopped.stderr == ""  # no library warnings either
        assert server.running_port() is None
        assert "The embedded Postgres is not running." in adpipe(home, "down").stdout
    finally:
        server.stop()


def test_embedded_postgres_retries_a_port_another_process_took(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The free port it picked is taken before the server binds it: the start is retried on another port."""
    import socket

    from pipeline.source import postgres

    real_free_port = postgres._free_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = iter([taken.getsockname()[1]])
        monkeypatch.setattr(postgres, "_free_port", lambda: next(picks, None) or real_free_port())
        with server_directory("adpipe-test-port-") as directory:
            server = EmbeddedPostgres(directory / "postgres")
            try:
                url = server.url()
                assert f":{taken.getsockname()[1]}/" not in url
                with psycopg.connect(url) as conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
                assert b"Address already in use" in (directory / "postgres" / "log").read_bytes()
            finally:
                server.stop()
