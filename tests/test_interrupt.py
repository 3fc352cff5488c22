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
    ("slow_id", "partitions", "settle"),
    [(1, 1, 0.0), (1, 2, 0.0), (4, 2, 0.0), (4, 2, 2.0)],
    ids=[
        "a chunk read",
        "a primary-key probe",
        "max(id) while the source opens",
        # By then the warehouse is open and Polars imported: the run's main thread waits for the source.
        "max(id) while the run waits for the source",
    ],
)
def test_ctrl_c_during_a_slow_source_read_stops_the_sync_at_once_and_leaves_nothing_behind(
    settings: Settings,
    pg: psycopg.Connection,
    slow_reader: dict[str, str],
    slow_id: int,
    partitions: int,
    settle: float,
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
        time.sleep(settle)
        interrupted = time.monotonic()
        sync.send_signal(signal.SIGINT)
        _, stderr = sync.communicate(timeout=SLEEP_SECONDS / 2)
        seconds = time.monotonic() - interrupted
    finally:
        sync.kill()
    assert seconds < 10, f"the sync took {seconds:.1f} s to stop"
    assert_stopped_cleanly(settings, pg, slow_reader, sync.returncode, stderr)


@pytest.mark.warehouses("chdb")
@pytest.mark.parametrize(("slow_id", "partitions"), [(1, 1)])
def test_ctrl_c_after_the_run_is_planned_and_before_it_stages_cancels_its_reads(
    settings: Settings, pg: psycopg.Connection, slow_reader: dict[str, str], slow_id: int, partitions: int
) -> None:
    """Between the plan and the staging, the source is no one's to close but the run's: the reads still running
    (the slow first chunk of impressions, started when the source opened) are cancelled there too."""
    env = {**slow_reader, "ADPIPE_TEST_KILL_AT": "staging-started", "ADPIPE_TEST_KILL_SIGNAL": "SIGINT"}
    began = time.monotonic()
    sync = adpipe(env, "sync", "--mode", "full", "--partitions", str(partitions), timeout=SLEEP_SECONDS / 2)
    assert time.monotonic() - began < 10
    assert_stopped_cleanly(settings, pg, slow_reader, sync.returncode, sync.stderr)


def assert_stopped_cleanly(
    settings: Settings, pg: psycopg.Connection, slow_reader: dict[str, str], returncode: int, stderr: str
) -> None:
    """Exit 130 with one line, the read cancelled on the server, nothing staged or committed; and once the source
    is fast again, the next sync loads all of it."""
    assert returncode == 130, stderr
    assert stderr.splitlines()[-1] == "error: interrupted" and "Traceback" not in stderr
    # The read was cancelled on the server, not left to sleep out its minute after the client went away.
    wait_until(lambda: sleeping_backends(pg, slow_reader["ADPIPE_ROLE"]) == 0, 5, "the server to cancel the read")
    assert list_runs(settings.staging_dir) == [] and not list(settings.staging_dir.glob(".tmp-*"))
    assert not (settings.home / STATE_FILE).exists()
    pg.execute("ALTER TABLE impressions DISABLE ROW LEVEL SECURITY")
    done = adpipe(slow_reader, "sync", "--json")
    assert done.returncode == 0, done.stderr
    tables = json.loads(done.stdout)["tables"]
    assert (tables["impressions"]["loaded"], tables["clicks"]["loaded"]) == (4, 2)


# Polars imported on a thread, as a sync's source thread may, then the main thread blocked on a lock, as a run
# waiting for its source or a load is.
BLOCKED_MAIN_THREAD = """
import os, signal, threading, time
import pipeline.cli
importer = threading.Thread(target=__import__, args=("polars",))
importer.start()
importer.join()
threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
began = time.monotonic()
try:
    threading.Event().wait()
except KeyboardInterrupt:
    print(round(time.monotonic() - began, 1))
"""


def test_ctrl_c_wakes_a_main_thread_blocked_on_a_lock_once_polars_is_imported() -> None:
    """Polars' import replaces Python's SIGINT handler with one under which a blocked wait resumes
    (pipeline/cli/interrupt.py): without the `adpipe` command putting Python's back, this waits forever."""
    shown = subprocess.run([sys.executable, "-c", BLOCKED_MAIN_THREAD], capture_output=True, text=True, timeout=20)
    assert shown.returncode == 0, shown.stderr
    assert float(shown.stdout) < 2


# Commands on adpipe's app, run the way `python -m pipeline` runs its own.
INTERRUPTED_COMMANDS = """
import signal
from pipeline.cli import app
from pipeline.errors import AdpipeError

@app.command()
def inside_exec() -> None:
    exec("raise KeyboardInterrupt")

@app.command()
def as_another_error() -> None:
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        raise AdpipeError("the source read was cancelled") from None

app()
"""


@pytest.mark.parametrize(
    "command",
    [
        # CPython marks an interrupt that ended code run by `exec` (as dataclasses make their methods, when a module
        # defining one is imported) as unhandled, and `python -m` would end by SIGINT: returncode -2.
        "inside-exec",
        # A read Ctrl-C cancelled, an import it interrupted: the error it surfaced as is not what is reported.
        "as-another-error",
    ],
)
def test_an_interrupted_command_ends_with_130_and_one_line(tmp_path: Path, command: str) -> None:
    (tmp_path / "interrupted_commands.py").write_text(INTERRUPTED_COMMANDS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    ended = subprocess.run(
        [sys.executable, "-m", "interrupted_commands", command], env=env, capture_output=True, text=True
    )
    assert ended.returncode == 130
    assert ended.stderr.splitlines() == ["error: interrupted"]


# Ctrl-C while `adpipe` imports its commands, delivered inside code run by `exec` as a dataclass's is.
INTERRUPTED_WHILE_IMPORTING = """
import signal, sys

class CtrlCWhileImporting:
    def find_spec(self, name, path=None, target=None):
        if name == "pipeline.cli.demo":
            exec("signal.raise_signal(signal.SIGINT)")

sys.meta_path.insert(0, CtrlCWhileImporting())
from pipeline.cli import main
main()
"""


def test_ctrl_c_while_the_commands_are_imported_ends_with_130_and_one_line(tmp_path: Path) -> None:
    (tmp_path / "interrupted_while_importing.py").write_text(INTERRUPTED_WHILE_IMPORTING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    ended = subprocess.run(
        [sys.executable, "-m", "interrupted_while_importing", "kpi", "list"], env=env, capture_output=True, text=True
    )
    assert (ended.returncode, ended.stderr.splitlines()) == (130, ["error: interrupted"])


# Ctrl-C handled in a weakref callback, as imports run some: Python prints the KeyboardInterrupt and drops it.
DROPPED_IN_A_CALLBACK = """
import threading, time, weakref
import pipeline.cli
class Thing:
    pass
def callback(_):
    raise KeyboardInterrupt
thing = Thing()
ref = weakref.ref(thing, callback)
began = time.monotonic()
try:
    del thing
    threading.Event().wait(20)
except KeyboardInterrupt:
    print(round(time.monotonic() - began, 1))
"""


def test_ctrl_c_dropped_by_python_in_a_weakref_callback_still_interrupts_the_main_thread() -> None:
    shown = subprocess.run([sys.executable, "-c", DROPPED_IN_A_CALLBACK], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert float(shown.stdout) < 2
    assert shown.stderr == ""


# The same, as the interpreter shuts down once a command is done: its last collection runs the callback.
DROPPED_AT_SHUTDOWN = """
import weakref
import pipeline.cli
class Thing:
    pass
def callback(_):
    raise KeyboardInterrupt
thing = Thing()
thing.itself = thing
ref = weakref.ref(thing, callback)
del thing
"""


def test_ctrl_c_as_the_process_shuts_down_after_its_command_adds_nothing_to_stderr() -> None:
    shown = subprocess.run([sys.executable, "-c", DROPPED_AT_SHUTDOWN], capture_output=True, text=True, timeout=30)
    assert (shown.returncode, shown.stderr) == (0, "")
