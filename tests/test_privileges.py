"""A Postgres role without a privilege a command needs: one `error:` line naming what was refused, nothing changed.

The grants each command needs are in docs/operations.md (Grants); these tests take them away one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from pipeline import catalog
from pipeline.config import Settings
from pipeline.source.capture import ensure_publication
from pipeline.warehouse import client as clickhouse
from tests.conftest import run_cli
from tests.test_sync import seed_hand_built

pytestmark = pytest.mark.warehouses("chdb")

SOURCE_TABLES = "advertiser, campaign, impressions, clicks"


@contextmanager
def as_role(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, *grants: str, database: str = ""
) -> Iterator[str]:
    """Run the block's commands as a new login role holding only `grants` (`{role}` in them is its name), on the
    test's source database or on `database`."""
    role = f"adpipe_p_{settings.clickhouse_database[2:]}"
    pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'limited-role'")
    try:
        for grant in grants:
            pg.execute(grant.format(role=role))
        url = urlsplit(settings.postgres_url)
        path = f"/{database}" if database else url.path
        url = url._replace(netloc=f"{role}:limited-role@{url.hostname}:{url.port}", path=path)
        monkeypatch.setenv("ADPIPE_POSTGRES_URL", urlunsplit(url))
        yield role
    finally:
        pg.execute(f"DROP OWNED BY {role}")
        pg.execute(f"DROP ROLE {role}")


def test_a_role_that_reads_the_source_tables_alone_may_run_the_source_commands(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The referral schema is not the sync's: a role without USAGE on it still runs `stats` and a sync."""
    seed_hand_built(pg)
    with as_role(settings, pg, monkeypatch, f"GRANT SELECT ON {SOURCE_TABLES} TO {{role}}"):
        stats = run_cli("stats")
        assert stats.exit_code == 0, stats.stderr
        assert "impressions" in stats.stdout
        synced = run_cli("sync", "--mode", "full")
        assert synced.exit_code == 0, synced.stderr


@pytest.mark.parametrize("engine", ["adbc", "connectorx"])
def test_a_table_the_role_may_not_read_stops_the_sync_in_one_line(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    seed_hand_built(pg)
    with as_role(settings, pg, monkeypatch, "GRANT SELECT ON advertiser, campaign, impressions TO {role}"):
        for command in (["stats"], ["sync", "--mode", "full", "--engine", engine]):
            result = run_cli(*command)
            assert result.exit_code == 1, (command, result.stdout)
            assert result.stderr.startswith("error: Postgres refused: permission denied for table clicks"), command
            assert result.stderr.count("\n") == 1, result.stderr
            assert "limited-role" not in result.stderr
    assert not settings.staging_dir.exists() or not any(settings.staging_dir.glob("*-full"))
    assert not (settings.home / "last_synced_ids.json").exists()


def test_a_role_that_may_not_create_the_missing_source_schema_says_so(
    settings: Settings, pg: psycopg.Connection, pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database without the source tables, and a role that may not create them (Postgres 15+ takes CREATE on
    schema public from everyone but its owner)."""
    empty = f"{settings.clickhouse_database}_empty"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{empty}"')
    try:
        with as_role(settings, pg, monkeypatch, database=empty):
            result = run_cli("stats")
        assert result.exit_code == 1
        assert result.stderr.startswith("error: Postgres refused: permission denied for schema public"), result.stderr
        assert result.stderr.count("\n") == 1
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{empty}" WITH (FORCE)')


def test_a_role_that_may_not_write_the_reports_stops_an_events_load_before_anything_is_staged(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """It used to stage the events and send them to ClickHouse, then fail on the reports with a traceback."""
    events = tmp_path / "e.jsonl"
    events.write_text(
        '{"event_id": "a", "customer_id": 1, "user_id": 2, "fired_at": "01/05/2022, 14:23:15",'
        ' "event_type": "ReferralPageLoad", "ip": "10.0.0.1", "email": "a@example.com"}\n'
    )
    readers = [f"GRANT SELECT ON {SOURCE_TABLES} TO {{role}}", "GRANT USAGE ON SCHEMA referral TO {role}"]
    grants = [*readers, "GRANT SELECT ON ALL TABLES IN SCHEMA referral TO {role}"]
    with as_role(settings, pg, monkeypatch, *grants) as role:
        result = run_cli("events", "load", str(events))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: role {role} may not write the referral reports at postgresql://{role}:***@"
    )
    assert (
        "it needs SELECT, INSERT, DELETE on referral.click_through_rate; SELECT, INSERT, DELETE on referral.clicks"
        in (result.stderr)
    )
    assert result.stderr.count("\n") == 1
    assert not (settings.staging_dir / "referral_events").exists()
    sent = "SELECT sum(rows) FROM system.parts WHERE database = currentDatabase() AND table = 'referral_events'"
    assert clickhouse.connect(settings).command(sent) == 0
    with as_role(
        settings, pg, monkeypatch, *readers, "GRANT SELECT, INSERT, DELETE ON ALL TABLES IN SCHEMA referral TO {role}"
    ):
        assert run_cli("events", "load", str(events)).exit_code == 0


def test_a_first_full_sync_that_stops_while_reading_leaves_no_replication_slot(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run created the slot, then could not read clicks: no state names the slot, and it would hold WAL for a
    sync that may never come."""
    seed_hand_built(pg)
    ensure_publication(pg, catalog.SOURCE_TABLES)  # as the tables' owner, as `init` would
    grants = ("ALTER ROLE {role} REPLICATION", "GRANT SELECT ON advertiser, campaign, impressions TO {role}")
    with as_role(settings, pg, monkeypatch, *grants):
        result = run_cli("sync", "--mode", "full")
        assert result.exit_code == 1
        assert result.stderr.startswith("error: Postgres refused: permission denied for table clicks"), result.stderr
    slots = pg.execute("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()").fetchall()
    assert slots == []
