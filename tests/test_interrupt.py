"""Ctrl-C stops a one-shot sync at once, whatever the source is doing at that moment.

The source is made slow on purpose: a role under a row-level security policy that makes the server sleep a minute
when it reads one given impression. With the one of id 1, reading `max(id)` (which touches only the highest id) is
quick, so the run opens; then the first chunk of impressions, read in a thread of its own (or, with two partitions,
the primary-key probe that splits it), takes a minute. With the highest id, `max(id)` itself does, while the source
is still opening in its thread and the warehouse opens beside it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from pipeline.config import Settings
from pipeline.sync.stage import list_runs
from pipeline.sync.state import STATE_FILE
from tests.harness import adpipe, wait_until
from tests.test_sync import seed_hand_built

SLEEP_SECONDS = 60


@pytest.fixture
def slow_reader(
    settings: Settings, pg: psycopg.Connection, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, str]]:
    """The environment of an `adpipe` process that reads the source as a role for which reading the impression
    whose id the test is parametrized with (`slow_id`) is slow."""
    seed_hand_built(pg)  # impressions 1 to 4
    role = f"adpipe_slow_{settings.clickhouse_database[2:]}"
    pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'slow-reader'")
    pg.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public, referral TO {role}")
    pg.execute(f"GRANT USAGE ON SCHEMA referral TO {role}")
    pg.execute("ALTER TABLE impressions ENABLE ROW LEVEL SECURITY")
    pg.execute(
        f"CREATE POLICY slow ON impressions FOR SELECT TO {role}"
        f" USING (id <> {int(request.getfixturevalue('slow_id'))} OR pg_sleep({SLEEP_SECONDS}) IS NOT NULL)"
    )
    url = urlsplit(settings.postgres_url)
    netloc = f"{role}:slow-reader@{url.hostname}:{url.port}"
    yield {
        **os.environ,
        "ADPIPE_POSTGRES_URL": urlunsplit(url._replace(netloc=netloc)),
        "ADPIPE_CLICKHOUSE_URL": f"chdb://{tmp_path / 'interrupted-clickhouse'}",
        "ADPIPE_ROLE": role,
    }
    pg.execute("ALTER TABLE impressions DISABLE ROW LEVEL SECURITY")
    pg.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
    pg.execute(f"DROP OWNED BY {role}")
    pg.execute(f"DROP ROLE {role}")


def sleeping_backends(pg: psycopg.Connection, role: str) -> int:
    return pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND wait_event = 'PgSleep'", (role,)
    ).fetchone()[0]


@pytest.mark.warehouses("chdb")
@pytest.mark.parametrize(
    ("slow_id", "partitions"),
    [(1, 1), (1, 2), (4, 2)],
    ids=["a chunk read", "a primary-key probe", "max(id) while the source opens"],
)
def test_ctrl_c_during_a_slow_source_read_stops_the_sync_at_once_and_leaves_nothing_behind(
    settings: Settings, pg: psycopg.Connection, slow_reader: dict[str, str], slow_id: int, partitions: int
) -> None:
    role = slow_reader["ADPIPE_ROLE"]
    sync = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sync", "--mode", "full", "--partitions", str(partitions)],
        env=slow_reader,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: sleeping_backends(pg, role), 30, f"the sync's read of id {slow_id} to sleep on the server")
        interrupted = time.monotonic()
        sync.send_signal(signal.SIGINT)
        _, stderr = sync.communicate(timeout=SLEEP_SECONDS / 2)
        seconds = time.monotonic() - interrupted
    finally:
        sync.kill()
    assert sync.returncode == 130
    assert stderr.splitlines()[-1] == "error: interrupted" and "Traceback" not in stderr
    assert seconds < 10, f"the sync took {seconds:.1f} s to stop"
    # The read was cancelled on the server, not left to sleep out its minute after the client went away.
    wait_until(lambda: sleeping_backends(pg, role) == 0, 5, "the server to cancel the sync's read")
    assert list_runs(settings.staging_dir) == [] and not list(settings.staging_dir.glob(".tmp-*"))
    assert not (settings.home / STATE_FILE).exists()
    # Once the source is fast again, the next sync loads all of it.
    pg.execute("ALTER TABLE impressions DISABLE ROW LEVEL SECURITY")
    done = adpipe(slow_reader, "sync", "--json")
    assert done.returncode == 0, done.stderr
    tables = json.loads(done.stdout)["tables"]
    assert (tables["impressions"]["loaded"], tables["clicks"]["loaded"]) == (4, 2)
