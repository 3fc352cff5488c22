"""Start-up: the commands a user types most often start without the heavy libraries (docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pipeline.config import Settings
from tests.test_sync import seed_hand_built

HEAVY = ("polars", "pyarrow", "duckdb", "chdb", "clickhouse_connect", "plotly", "pandas", "numpy")

RUN_AND_LIST_IMPORTS = """
import json, sys
from pipeline.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
except SystemExit as exit:
    assert not exit.code, exit.code
print(json.dumps(sorted(set(sys.modules) & set(json.loads(sys.stdin.readline())))))
"""


def heavy_imports(*args: str) -> list[str]:
    """The heavy libraries an `adpipe ARGS` process has imported once the command is done."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_IMPORTS, *args],
        input=json.dumps(HEAVY) + "\n",
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("args", [("--help",), ("kpi", "list"), ("sync", "--help")])
def test_help_and_the_kpi_list_import_no_heavy_library(args: tuple[str, ...]) -> None:
    assert heavy_imports(*args) == []


@pytest.mark.warehouses("chdb")
def test_stats_imports_no_heavy_library(settings: Settings, pg: psycopg.Connection) -> None:
    seed_hand_built(pg)
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (NULL, '2026-11-21 01:00:00')")  # id 5
    from pipeline.sync.run import SyncOptions, sync

    sync(settings, SyncOptions())  # a committed state with one row in quarantine
    assert heavy_imports("stats") == []


def test_the_heavy_list_is_what_a_sync_imports(
    settings: Settings, pg: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: a command that does use those libraries shows them."""
    seed_hand_built(pg)
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", f"chdb://{tmp_path / 'own-engine'}")  # chDB: one process per path
    assert {"polars", "pyarrow", "clickhouse_connect"} <= set(heavy_imports("sync", "--mode", "full"))


def test_a_sync_does_not_import_pandas(
    settings: Settings, pg: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pandas is a third of a second of every sync process and the sync has no use for it: neither its own code nor
    its drivers' DB-API modules may bring it in (ADBC's does, through pyarrow.dataset)."""
    seed_hand_built(pg)
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", f"chdb://{tmp_path / 'own-engine'}")
    assert "pandas" not in heavy_imports("sync", "--mode", "full")
    pg.execute("UPDATE clicks SET campaign_id = 2 WHERE id = 1")  # the incremental run reads the slot and re-reads
    assert "pandas" not in heavy_imports("sync")
