"""`adpipe sync --follow`: a real follower process over the embedded Postgres and chDB, driven from outside.

Counts are the hand-built seed's (tests.test_sync.seed_hand_built: 2 advertisers, 3 campaigns, 4 impressions, 2
clicks) plus the rows each test inserts itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import Settings
from pipeline.errors import BusyError, ConfigError, SourceError, StagingError, SyncRefusedError, is_transient
from pipeline.options import parse_duration
from pipeline.sync.follow import MAX_BACKOFF_SECONDS, RepeatedWarnings, backoff
from pipeline.sync.stage import list_runs
from tests.conftest import run_cli, server_directory
from tests.harness import adpipe, capture_slot, wait_until
from tests.test_sync import seed_hand_built


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """The test's environment, with an engine of its own: the follower and the readers are other processes."""
    return {**os.environ, "ADPIPE_CLICKHOUSE_URL": f"chdb://{tmp_path / 'followed-clickhouse'}"}


class Follower:
    def __init__(self, process: subprocess.Popen[str], out: Path, port: int | None) -> None:
        self.process, self.out, self.port = process, out, port

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, by name and labels."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def stop(self, signal_number: int = signal.SIGTERM) -> tuple[int, str]:
        self.process.send_signal(signal_number)
        _, stderr = self.process.communicate(timeout=60)
        return self.process.returncode, stderr

    def stops_cleanly(self, signal_number: int = signal.SIGTERM) -> None:
        """The signal ends it after its current run, with exit 0 and its last line."""
        code, stderr = self.stop(signal_number)
        assert code == 0, stderr
        assert f"{signal.Signals(signal_number).name}: stopping after the current run" in stderr
        assert self.lines()[-1] == "Stopped after the current run."

    def fatal_line(self) -> str:
        """Wait for it to exit on its own: it must exit 1, without a traceback; returns its last stderr line."""
        self.process.wait(timeout=60)
        stderr = self.process.communicate()[1]
        assert self.process.returncode == 1, stderr
        assert "Traceback" not in stderr
        return stderr.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def following(env: dict[str, str], tmp_path: Path, *args: str, metrics: bool = False) -> Iterator[Follower]:
    """A follower in the background; killed at the end if the test did not stop it."""
    out = tmp_path / f"follower-{time.monotonic_ns()}.out"
    port = free_port() if metrics else None
    extra = ["--metrics-port", str(port)] if port else []
    with out.open("w") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "sync", "--follow", *args, *extra],
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
    follower = Follower(process, out, port)
    try:
        yield follower
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def runs_seen(follower: Follower, count: int) -> list[str]:
    """Wait for `count` run lines of the follower (each names its run id)."""

    def enough() -> list[str] | None:
        assert follower.process.poll() is None, f"follower exited: {follower.process.communicate()[1]}"
        runs = [line for line in follower.lines() if line.startswith("2") and "Z-" in line]
        return runs if len(runs) >= count else None

    return wait_until(enough, 60, f"{count} follower runs")


def ch_rows(env: dict[str, str], table: str) -> int:
    """Rows of `table` in the warehouse, read by `adpipe status` from another process."""
    done = adpipe(env, "status")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if f" {table} " in line)
    return int(row.split("│")[4].replace(",", ""))


def test_follower_syncs_new_rows_reads_work_beside_it_and_sigterm_exits_0(
    settings: Settings, pg: psycopg.Connection, env: dict[str, str], tmp_path: Path
) -> None:
    seed_hand_built(pg)
    with following(env, tmp_path, "--interval", "300ms", metrics=True) as follower:
        assert "-full: advertiser +2, campaign +3, impressions +4, clicks +2" in runs_seen(follower, 1)[0]
        pg.execute("INSERT INTO impressions (campaign_id, created_at) SELECT 3, now() FROM generate_series(1, 5)")
        pg.execute("UPDATE clicks SET campaign_id = 2 WHERE id = 2")  # change capture: re-attributed

        def synced() -> dict | None:
            samples = follower.metrics()
            return samples if samples.get(("adpipe_warehouse_rows", (("table", "impressions"),))) == 9 else None

        samples = wait_until(synced, 60, "the 5 new impressions in the follower's metrics")
        assert samples[("adpipe_source_rows", (("table", "impressions"),))] == 9
        assert samples[("adpipe_lag_rows", (("table", "impressions"),))] == 0
        assert samples[("adpipe_warehouse_rows", (("table", "clicks"),))] == 2
        assert samples[("adpipe_follow_runs_total", (("result", "failed"),))] == 0
        assert samples[("adpipe_follow_runs_total", (("result", "success"),))] >= 2
        assert samples[("adpipe_run_duration_seconds_count", ())] >= 2
        assert ("adpipe_slot_wal_retained_bytes", ()) in samples
        served = {name for name, _ in samples}
        assert documented_metrics() <= served | {"up"}, documented_metrics() - served

        # Reads from other processes while it follows: the follower hands the embedded engine over between runs.
        assert ch_rows(env, "impressions") == 9
        ctr = adpipe(env, "kpi", "campaign_ctr", "--format", "csv")
        assert ctr.returncode == 0, ctr.stderr
        per_campaign = {line.split(",")[0]: line.split(",")[2:4] for line in ctr.stdout.splitlines()[1:]}
        assert per_campaign == {"1": ["3", "1"], "2": ["1", "1"], "3": ["5", "0"]}
        chstats = adpipe(env, "chstats")
        assert chstats.returncode == 0, chstats.stderr
        runs_before = len(runs_seen(follower, 1))
        runs_seen(follower, runs_before + 1)  # and it went on syncing after each read
        follower.stops_cleanly()


def test_the_follower_keeps_its_postgres_connections_between_runs(
    settings: Settings, pg: psycopg.Connection, env: dict[str, str], tmp_path: Path
) -> None:
    """After its first runs, every Postgres backend the follower uses was already there: none is opened per run."""

    def backends() -> set[int]:
        rows = pg.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        return {pid for (pid,) in rows}

    seed_hand_built(pg)
    with following(env, tmp_path, "--interval", "200ms") as follower:
        runs = len(runs_seen(follower, 3))
        before = wait_until(backends, 30, "the follower's connections")
        pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (1, now())")  # work for the next runs
        runs_seen(follower, runs + 5)
        after = backends()
        assert follower.stop()[0] == 0
    assert after and after <= before, (before, after)
    assert backends() == set(), "a stopped follower leaves no connection behind"


def test_with_keep_the_idle_runs_of_a_follower_do_not_pile_up(
    settings: Settings, pg: psycopg.Connection, env: dict[str, str], tmp_path: Path
) -> None:
    seed_hand_built(pg)
    with following(env, tmp_path, "--interval", "200ms", "--keep", "2") as follower:
        runs_seen(follower, 2)
        pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (1, now())")
        seen = runs_seen(follower, 12)
        assert follower.stop()[0] == 0
    staged = [run.run_id for run in list_runs(settings.staging_dir)]
    with_data = [line.split(":")[0] for line in seen if "no changes" not in line]
    assert len(with_data) == 2  # the full run, and the run with the new impression
    # Those two, and of the idle runs only the newest two (--keep 2), the last one being the state's.
    assert set(with_data) <= set(staged) and len(staged) <= 4, staged
    assert staged[-1] == follower.lines()[-2].split(":")[0]


def test_json_lines_and_each_warning_once(
    settings: Settings, pg: psycopg.Connection, env: dict[str, str], tmp_path: Path
) -> None:
    """With --json, stdout holds one JSON object per run and nothing else (where the metrics are served goes to
    stderr); a warning every run would repeat (change capture off) is printed once."""
    seed_hand_built(pg)
    off = {**env, "ADPIPE_CHANGE_CAPTURE": "false"}
    with following(off, tmp_path, "--interval", "200ms", "--json", metrics=True) as follower:

        def runs() -> list[dict] | None:
            lines = follower.out.read_text().split("\n")[:-1]  # whole lines only: the last may be half written
            return [json.loads(line) for line in lines] if len(lines) >= 4 else None

        first = wait_until(runs, 60, "4 runs")[0]
        _, stderr = follower.stop()
    assert follower.process.returncode == 0, stderr
    assert first["run"]["mode"] == "full" and first["run"]["tables"]["impressions"]["loaded"] == 4
    assert first["error"] is None
    assert all(json.loads(line)["run"]["run_id"].endswith("-incremental") for line in follower.lines()[1:])
    assert stderr.count("change capture is off (ADPIPE_CHANGE_CAPTURE is off)") == 1, stderr
    assert stderr.strip().splitlines()[-1] == "Stopped after the current run."
    assert f"Metrics at http://127.0.0.1:{follower.port}/metrics" in stderr


def test_one_follower_per_home_and_no_one_shot_sync_beside_it(
    settings: Settings, pg: psycopg.Connection, env: dict[str, str], tmp_path: Path
) -> None:
    seed_hand_built(pg)
    with following(env, tmp_path, "--interval", "1s") as follower:
        runs_seen(follower, 1)
        for args in (["sync", "--follow"], ["sync"]):
            busy = adpipe(env, *args)
            assert busy.returncode == 1
            assert busy.stderr.startswith("error: sync is busy: another adpipe process")
            assert len(busy.stderr.strip().splitlines()) == 1
            assert "Following" not in busy.stdout
        follower.stops_cleanly(signal.SIGINT)  # Ctrl-C: the same as SIGTERM


def test_a_truncated_source_stops_the_follower_with_its_line(
    settings: Settings, pg: psycopg.Connection, env: dict[str, str], tmp_path: Path
) -> None:
    seed_hand_built(pg)
    with following(env, tmp_path, "--interval", "300ms") as follower:
        runs_seen(follower, 1)
        pg.execute("TRUNCATE clicks")
        assert follower.fatal_line() == (
            "error: the source was reset (clicks truncated); run `adpipe sync --mode full`, "
            "or pass --on-reset full to do so automatically"
        )


def test_a_dropped_slot_stops_the_follower_with_its_line(
    settings: Settings, pg: psycopg.Connection, env: dict[str, str], tmp_path: Path
) -> None:
    seed_hand_built(pg)
    with following(env, tmp_path, "--interval", "300ms") as follower:
        runs_seen(follower, 2)  # the second run reads the slot the first (full) one created
        slot = capture_slot(settings, env)

        def dropped() -> bool:
            try:
                pg.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg.errors.ObjectInUse:  # a run is reading it right now
                return False
            return True

        wait_until(dropped, 30, f"slot {slot} dropped")
        assert follower.fatal_line() == (
            f"error: replication slot {slot} was dropped: fact updates and deletes since the last sync cannot be read;"
            " run `adpipe sync --mode full` to reload and start change capture again"
        )


def test_a_failed_run_is_reported_and_retried(
    settings: Settings, pg: psycopg.Connection, env: dict[str, str], tmp_path: Path
) -> None:
    """A reader keeps the engine longer than the follower waits for it: the follower's next run fails as busy,
    is reported with its retry, and the run after the reader left succeeds with the rows inserted meanwhile."""
    seed_hand_built(pg)
    follower_env = {**env, "ADPIPE_ENGINE_WAIT_SECONDS": "0.2"}
    with following(follower_env, tmp_path, "--interval", "200ms", metrics=True) as follower:
        runs_seen(follower, 1)
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_ENGINE, settings.clickhouse_database],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (3, now())")

        def failed_once() -> bool:
            return follower.metrics().get(("adpipe_follow_runs_total", (("result", "failed"),)), 0) >= 1

        wait_until(failed_once, 60, "a failed run in the follower's metrics")
        holder.communicate(input=None, timeout=60)

        def recovered() -> dict | None:
            samples = follower.metrics()
            done = samples.get(("adpipe_warehouse_rows", (("table", "clicks"),))) == 3
            return samples if done and samples[("adpipe_follow_consecutive_failures", ())] == 0 else None

        wait_until(recovered, 60, "the click synced after the reader left")
        code, stderr = follower.stop()
    assert code == 0
    assert "run failed (1 in a row): embedded ClickHouse at" in stderr
    assert "is busy" in stderr and "retrying in 1 s" in stderr


_HOLD_ENGINE = """
import sys, time
from pipeline.config import load_settings
from pipeline.warehouse import client
client.connect(load_settings())
print("holding", flush=True)
time.sleep(2.5)
"""


def documented_metrics() -> set[str]:
    """Every metric docs/follow.md names (its table and its alert rules), as the samples a scrape gives."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "follow.md").read_text()
    names = set(re.findall(r"\b(adpipe_[a-z_]+|up)\b", text))
    assert "adpipe_run_duration_seconds" in names and "adpipe_lag_seconds" in names
    # A histogram is served as its _bucket, _count and _sum samples.
    return {f"{name}_count" if name == "adpipe_run_duration_seconds" else name for name in names}


def test_interval_and_metrics_options_fail_in_one_line(settings: Settings) -> None:
    for args, message in (
        (["--follow", "--interval", "soon"], "error: --interval: 'soon' is not a duration"),
        (["--follow", "--interval", "0s"], "error: --interval must be more than 0, got 0s"),
        (["--metrics-port", "9108"], "error: --metrics-port serves the metrics of a follower: add --follow"),
        (["--follow", "--verify"], "error: --verify runs once"),
    ):
        result = run_cli("sync", *args)
        assert result.exit_code == 1
        assert result.stderr.startswith(message), result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"), [("5s", 5.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("1.5", 1.5), (" 3 S", 3.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-1s", "5 seconds", "1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_backoff_doubles_from_the_interval_and_is_capped() -> None:
    assert [backoff(5, failures) for failures in (1, 2, 3)] == [5, 10, 20]
    assert backoff(0.2, 1) == 1  # never busier than once a second while failing
    assert backoff(5, 50) == MAX_BACKOFF_SECONDS


def test_a_kept_connection_the_server_dropped_is_replaced_not_handed_out(
    settings: Settings, pg: psycopg.Connection
) -> None:
    from pipeline.source.postgres import (
        ArrowConnection,
        close_adbc,
        connect,
        keep_connections,
        open_adbc,
        postgres_url,
    )

    def adbc_pid(conn: ArrowConnection) -> int:
        return conn.read_arrow("SELECT pg_backend_pid()").column(0)[0].as_py()

    url = postgres_url(settings)
    with keep_connections():
        with connect(settings) as first:
            kept_pid = first.info.backend_pid
        with connect(settings) as again:
            assert again.info.backend_pid == kept_pid  # kept
        adbc = open_adbc(url)
        adbc_kept = adbc_pid(adbc)
        close_adbc(url, adbc)
        pg.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", ([kept_pid, adbc_kept],))
        wait_until(
            lambda: (
                not pg.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", ([kept_pid, adbc_kept],)
                ).fetchone()[0]
            ),
            10,
            "the terminated backends to go",
        )
        with connect(settings) as replaced:
            assert replaced.execute("SELECT 1").fetchone() == (1,)
            assert replaced.info.backend_pid != kept_pid
        adbc = open_adbc(url)
        assert adbc_pid(adbc) != adbc_kept
        close_adbc(url, adbc)
    # The end of keep_connections closes every kept connection. A backend leaves pg_stat_activity a moment after its
    # client closed the connection, not at once: a look right away saw one still there (a run of the whole suite).
    others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    wait_until(lambda: pg.execute(others).fetchone()[0] == 0, 10, "the kept connections' backends to end")


def test_compose_runs_the_follower_against_the_stack() -> None:
    """On paper only here (no Docker engine): the service's command, what it waits for, where it listens."""
    compose = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())
    follower = compose["services"]["follower"]
    assert follower["profiles"] == ["follow"]
    command = follower["command"]
    assert command[command.index("adpipe") :] == [
        "adpipe", "sync", "--follow", "--interval", "5s", "--keep", "100",
        "--metrics-port", "9108", "--metrics-address", "0.0.0.0",
    ]  # fmt: skip
    assert follower["depends_on"] == {
        "flyway": {"condition": "service_completed_successfully"},
        "clickhouse": {"condition": "service_healthy"},
    }
    assert follower["ports"] == ["127.0.0.1:${ADPIPE_METRICS_PORT:-9108}:9108"]  # published to this host only
    assert follower["environment"]["ADPIPE_CLICKHOUSE_URL"].startswith("http://adpipe_writer:")  # not `default`
    assert follower["stop_grace_period"] == "10m"  # SIGTERM, then time to finish the current run


def test_a_warning_every_run_repeats_is_printed_once_and_again_when_it_comes_back() -> None:
    repeats = RepeatedWarnings()

    def passes(message: str, level: int = logging.WARNING) -> bool:
        return repeats.filter(logging.LogRecord("pipeline.sync.capture", level, __file__, 1, message, None, None))

    printed = []
    for run_warnings in (["capture off"], ["capture off"], ["capture off", "slot lag"], [], ["capture off"]):
        repeats.next_run()
        printed.append([message for message in run_warnings if passes(message)])
    assert printed == [["capture off"], [], ["slot lag"], [], ["capture off"]]
    repeats.next_run()
    assert passes("sync run failed", logging.ERROR) and passes("sync run failed", logging.ERROR)  # errors always


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (BusyError("sync is busy", path="sync.lock", holder="1"), True),
        (SourceError("cannot reach Postgres", url="postgresql://x", transient=True), True),
        (SourceError("password authentication failed", url="postgresql://x"), False),
        (StagingError("cannot reach S3 staging", transient=True), True),
        (StagingError("bucket 'b' does not exist"), False),
        (SyncRefusedError("the replica is behind", transient=True), True),
        (SyncRefusedError("the source was reset"), False),
        (ConfigError("--interval must be more than 0"), False),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (ValueError("a bug"), False),
    ],
)
def test_which_failures_a_follower_retries(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_adbc_connections_to_one_source_share_the_drivers_database_handle(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """The ADBC driver's database handle connects once of its own to read the type catalog; connections made from
    it connect once each. Made per connection, k connections cost 2k sessions; shared, k + 1 (this test's database is
    new, so its handle is made here)."""
    from pipeline.source.postgres import open_adbc, postgres_url

    def sessions() -> int:
        pg.execute("SELECT pg_stat_clear_snapshot()")
        return pg.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]

    def settled() -> int:
        # A backend adds itself to the count when its statistics are flushed, at the latest as it exits.
        others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        wait_until(lambda: pg.execute(others).fetchone()[0] == 0, 10, "the closed connections' backends to end")
        first = sessions()
        time.sleep(0.5)
        assert sessions() == first, "the session count was still moving"
        return first

    url = postgres_url(settings)
    before = settled()
    for _ in range(3):
        conn = open_adbc(url)
        assert conn.read_arrow("SELECT 1 AS one").column("one").to_pylist() == [1]
        conn.close()
    assert settled() - before == 3 + 1


def test_the_shared_adbc_handle_serves_connections_after_its_server_restarts() -> None:
    """A follower keeps the driver's database handle for its whole life, across restarts of the source (an
    operator's, a failover to the same address): the handle holds no connection, and connections made from it after
    the restart work, while one made before fails as a broken connection, which the follower retries."""
    from pipeline.errors import describe_failure
    from pipeline.source.postgres import EmbeddedPostgres, open_adbc

    with server_directory("adpipe-test-pg-restart-") as directory:
        server = EmbeddedPostgres(directory / "postgres")
        url = server.url()
        try:
            before = open_adbc(url)
            assert before.read_arrow("SELECT 1 AS one").column("one").to_pylist() == [1]
            server.stop()
            assert server._try_start(int(url.rsplit(":", 1)[1].split("/")[0]))  # the same address
            after = open_adbc(url)
            assert after.read_arrow("SELECT 2 AS two").column("two").to_pylist() == [2]
            after.close()
            with pytest.raises(Exception) as broken:
                before.read_arrow("SELECT 3")
            assert describe_failure(broken.value).startswith("Postgres connection failed: ")
            assert is_transient(broken.value)
            before.close()
        finally:
            server.stop()


SERVE_ON_IPV6 = """
from pipeline.cli.sync import _serve_metrics
_serve_metrics(0, "::1", False)
"""


def test_metrics_on_an_ipv6_address_are_announced_with_the_address_in_brackets() -> None:
    done = subprocess.run([sys.executable, "-c", SERVE_ON_IPV6], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"Metrics at http://\[::1\]:\d+/metrics\n", done.stdout), done.stdout
