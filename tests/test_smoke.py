"""The first commands a user runs: generate a batch, look at it with `stats`, sync it, look again."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

from pipeline.config import Settings
from tests.conftest import run_cli

NOW = datetime(2026, 11, 20, 12, 0, 0)


def stats_rows(stdout: str) -> dict[str, list[str]]:
    """`adpipe stats`'s table as {table: [rows, min id, max id, first created_at, last created_at, quarantined]}."""
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in stdout.splitlines() if line.count("│") > 2]
    return {row[0]: row[1:] for row in cells if row[0] in ("advertiser", "campaign", "impressions", "clicks")}


def without_times(row: list[str]) -> list[str]:
    """Rows, min id, max id and quarantined: the figures of a `stats_rows` row that do not depend on the seed."""
    return row[:3] + row[5:]


def test_batch_then_stats(settings: Settings, pg: psycopg.Connection) -> None:
    """`stats` shows what `batch` wrote, worked out from its options: 2 advertisers × 2 campaigns × 10 impressions,
    round(0.08 × 10) = 1 click per campaign, all as of --now; and, once a sync quarantined a row, that row."""
    batch = ("batch", "--advertisers", "2", "--campaigns", "2", "--impressions", "10", "--seed", "1")
    result = run_cli(*batch, "--now", NOW.isoformat())
    assert result.exit_code == 0, result.stderr
    assert "Created 2 advertisers, 4 campaigns, 40 impressions, 4 clicks." in result.stdout

    stats = run_cli("stats")
    assert stats.exit_code == 0, stats.stderr
    rows = stats_rows(stats.stdout)
    # Advertisers and campaigns are created at --now exactly.
    assert rows["advertiser"] == ["2", "1", "2", "2026-11-20 12:00:00", "2026-11-20 12:00:00", "0"]
    assert rows["campaign"] == ["4", "1", "4", "2026-11-20 12:00:00", "2026-11-20 12:00:00", "0"]
    assert without_times(rows["impressions"]) == ["40", "1", "40", "0"]
    assert without_times(rows["clicks"]) == ["4", "1", "4", "0"]
    # Impressions fall in the 7 days before --now; a click comes 1-120 s after its impression.
    first, last = (datetime.fromisoformat(text) for text in rows["impressions"][3:5])
    assert NOW - timedelta(days=7) <= first <= last <= NOW
    first_click, last_click = (datetime.fromisoformat(text) for text in rows["clicks"][3:5])
    assert first + timedelta(seconds=1) <= first_click <= last_click <= last + timedelta(seconds=120)

    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (NULL, '2026-11-20 11:00:00')")  # id 41
    assert run_cli("sync").exit_code == 0
    rows = stats_rows(run_cli("stats").stdout)
    assert without_times(rows["impressions"]) == ["41", "1", "41", "1"]
    assert rows["clicks"][5] == rows["advertiser"][5] == rows["campaign"][5] == "0"
