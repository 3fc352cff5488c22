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
from tests.conftest import run_cli
from tests.test_sync import seed_hand_built

HEAVY = ("polars", "pyarrow", "duckdb", "chdb", "clickhouse_connect", "plotly", "pandas", "numpy", "pydantic")
"""pydantic: Typer 0.29 parses every option through it (pyproject.toml keeps Typer below that)."""

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


def test_stats_before_any_sync_imports_no_heavy_library(settings: Settings, pg: psycopg.Connection) -> None:
    """No state file yet: nothing is in quarantine, and no staged part needs reading to say so."""
    seed_hand_built(pg)
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


def test_the_console_script_exits_with_the_commands_code() -> None:
    """`main` freezes the garbage collector on the way out: the exit code and the output come through unchanged."""
    help_ = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True)
    assert (help_.returncode, "Advertising data from Postgres to ClickHouse" in help_.stdout) == (0, True)
    unknown = subprocess.run([sys.executable, "-m", "pipeline", "no-such-command"], capture_output=True, text=True)
    assert unknown.returncode == 2
    assert unknown.stderr == "error: No such command 'no-such-command'. (see `python -m pipeline --help`)\n"


GC_DURING = """
import gc
import pipeline.cli as cli
import pipeline.cli.sync as sync_cli
import pipeline.sync.follow as follow

seen = {}
cli.app = lambda: seen.setdefault("command", gc.isenabled())
cli.main()
follow.follow = lambda *args: seen.setdefault("follower", gc.isenabled())
sync_cli._follow(None, None, 5.0, None, "127.0.0.1", True)
print(seen)
"""


def test_the_collector_is_off_for_a_command_and_on_for_a_follower() -> None:
    """The console script runs its command without the cyclic garbage collector; `sync --follow` turns it on."""
    done = subprocess.run([sys.executable, "-c", GC_DURING], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "{'command': False, 'follower': True}"


@pytest.mark.parametrize(
    ("args", "message", "command"),
    [
        (["sync", "--mode", "bogus"], "Invalid value for '--mode': 'bogus' is not one of", "adpipe sync"),
        (["kpi", "campaign_ctr", "--from", "2026-13-01"], "Invalid value for '--from': '2026-13-01'", "adpipe kpi"),
        (["campaigns"], "Missing option '--advertiser-id'.", "adpipe campaigns"),
        (
            ["sync", "--follow", "--metrics-port", "65536"],
            "Invalid value for '--metrics-port': 65536 is not in the range 0<=x<=65535.",
            "adpipe sync",
        ),
        (
            ["sync", "--follow", "--metrics-port", "-1"],
            "Invalid value for '--metrics-port': -1 is not in the range 0<=x<=65535.",
            "adpipe sync",
        ),
        (["events", "load"], "Missing argument 'files'.", "adpipe events load"),
    ],
)
def test_a_command_line_that_does_not_parse_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str, command: str
) -> None:
    monkeypatch.setenv("ADPIPE_HOME", str(tmp_path / "home"))
    result = run_cli(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.endswith(f"(see `{command} --help`)\n")
    assert not (tmp_path / "home").exists()


def test_a_group_alone_shows_its_help() -> None:
    result = run_cli("events")
    assert "Usage: adpipe events" in result.stdout + result.stderr
    assert "error:" not in result.stderr


def test_a_command_that_loads_duckdb_ends_without_a_word_on_stderr(
    settings: Settings, pg: psycopg.Connection, tmp_path: Path
) -> None:
    """DuckDB's bindings report the objects of theirs still alive at exit (`nanobind: leaked …`) when `main` freezes
    the garbage collector; `reconcile` recomputes the KPIs with DuckDB."""
    seed_hand_built(pg)
    env = {**os.environ, "ADPIPE_CLICKHOUSE_URL": f"chdb://{tmp_path / 'own-engine'}"}
    synced = subprocess.run([sys.executable, "-m", "pipeline", "sync"], env=env, capture_output=True, text=True)
    assert synced.returncode == 0, synced.stderr
    done = subprocess.run([sys.executable, "-m", "pipeline", "reconcile"], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")


def test_syncs_in_processes_of_their_own_build_on_each_other(
    settings: Settings, pg: psycopg.Connection, tmp_path: Path
) -> None:
    """Each process opens the embedded engine, syncs and leaves; the next one finds the run and adds its own."""
    seed_hand_built(pg)
    env = {**os.environ, "ADPIPE_CLICKHOUSE_URL": f"chdb://{tmp_path / 'own-engine'}"}
    synced = subprocess.run(
        [sys.executable, "-m", "pipeline", "sync", "--json"], env=env, capture_output=True, text=True
    )
    assert synced.returncode == 0, synced.stderr
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-21 11:00:00')")
    again = subprocess.run(
        [sys.executable, "-m", "pipeline", "sync", "--json"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    counted = subprocess.run(
        [sys.executable, "-m", "pipeline", "kpi", "campaign_ctr", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert counted.returncode == 0, counted.stderr
    impressions = {row["campaign_id"]: row["impressions"] for row in json.loads(counted.stdout)}
    # seed_hand_built: 3 impressions of campaign 1, 1 of campaign 2, none of campaign 3; and the new one.
    assert impressions == {1: 3, 2: 2, 3: 0}


SOURCE_OPENS_FIRST = """
import json, sys
from pipeline.config import load_settings
from pipeline.options import Mode, SyncOptions
from pipeline.sync import run
from pipeline.sync.run_source import OpeningSource

loaded_at_snapshot = []
real_enter = OpeningSource.__enter__

def enter(self):
    opened = real_enter(self)  # the source's snapshot is taken
    loaded_at_snapshot.extend(sorted({"polars", "chdb", "clickhouse_connect"} & set(sys.modules)))
    return opened

OpeningSource.__enter__ = enter
run.sync(load_settings(), SyncOptions(mode=Mode(sys.argv[1])))
print(json.dumps(loaded_at_snapshot))
"""


@pytest.mark.warehouses("chdb")
@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_a_sync_takes_its_snapshot_before_it_imports_polars_or_the_warehouse_client(
    settings: Settings, pg: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A fresh sync process starts the source (connecting, the snapshot, the first reads) before it imports the run
    itself, so that Postgres works while those imports take a third of a second (docs/performance.md)."""
    seed_hand_built(pg)
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", f"chdb://{tmp_path / 'own-engine'}")  # chDB: one process per path
    for run_mode in ("full", mode):  # an incremental run needs a full one before it
        done = subprocess.run(
            [sys.executable, "-c", SOURCE_OPENS_FIRST, run_mode], capture_output=True, text=True, env=os.environ
        )
        assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
