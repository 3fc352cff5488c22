"""Staging on S3: the sync, snapshots, replay, prune, reconcile and the referral events load against a real
S3-compatible server.

The server is moto's, in a thread on a free port, for the whole session; each test gets its own
bucket. ClickHouse (the embedded engine) reads the parts from it with its s3() table function.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.config import S3Prefix, Settings
from pipeline.referral.load import LoadMode, load_files
from pipeline.referral.publish import warehouse_hourly_reports
from pipeline.referral.staging import quarantine_reasons
from pipeline.storage import Store
from pipeline.sync.stage import RunWriter, list_runs, quarantined_rows
from pipeline.sync.state import load_state
from pipeline.warehouse import client as clickhouse
from tests.conftest import SECRET, raw_s3, run_cli
from tests.test_events_load import CL, EXPECTED, LINES, QUARANTINED, reports, write
from tests.test_sync import aggregate_ch, ch, per_campaign_ch, seed_hand_built


def objects(endpoint: str, settings: Settings) -> list[str]:
    """Every object key under the staging prefix, relative to it."""
    assert isinstance(settings.staging_dir, S3Prefix)
    root = f"{settings.staging_dir.bucket}/{settings.staging_dir.prefix}"
    infos = raw_s3(endpoint).get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(i.path.removeprefix(root + "/") for i in infos if i.type == pafs.FileType.File)


def sync_ok(*args: str) -> str:
    result = run_cli("sync", *args)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_settings_parse_an_s3_staging_url(s3_settings: Settings) -> None:
    assert s3_settings.staging_dir == S3Prefix(s3_settings.staging_dir.bucket, "snapshots")
    assert str(s3_settings.staging_dir) == f"s3://{s3_settings.staging_dir.bucket}/snapshots"


def test_full_and_incremental_sync_through_s3(
    s3_settings: Settings, pg: psycopg.Connection, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_hand_built(pg)
    read_by_adpipe: list[str] = []
    real_read = Store.read_bytes

    def spy(self: Store, path: object) -> bytes:
        read_by_adpipe.append(str(path))
        return real_read(self, path)

    monkeypatch.setattr(Store, "read_bytes", spy)
    sync_ok("--mode", "full")
    assert per_campaign_ch(s3_settings, "impressions") == {1: 3, 2: 1}
    assert per_campaign_ch(s3_settings, "clicks") == {1: 2}
    assert sorted(
        ch(s3_settings, "SELECT campaign_id, day, sum(impressions), sum(clicks) FROM campaign_daily GROUP BY ALL")
    ) == [(1, date(2026, 11, 20), 2, 1), (1, date(2026, 11, 21), 1, 1), (2, date(2026, 11, 21), 1, 0)]
    assert ch(s3_settings, "SELECT count() FROM campaign FINAL") == [(3,)]
    # ClickHouse read the parts itself: adpipe read no Parquet bytes, and wrote nothing locally.
    assert not [path for path in read_by_adpipe if path.endswith(".parquet")]
    assert not (s3_settings.home.parent / "staging").exists()
    (run,) = list_runs(s3_settings.staging_dir)
    assert objects(s3_endpoint, s3_settings) == [
        f"{run.run_id}/{name}"
        for name in (
            "advertiser/part-00000.parquet",
            "campaign/part-00000.parquet",
            "clicks/part-00000.parquet",
            "impressions/part-00000.parquet",
            "manifest.json",
        )
    ] + ["adpipe-home.json"]  # the home whose runs these are

    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (3, '2026-11-22 12:00:00')")  # id 5
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (3, '2026-11-22 12:00:10')")
    sync_ok()
    assert per_campaign_ch(s3_settings, "impressions") == {1: 3, 2: 1, 3: 1}
    assert per_campaign_ch(s3_settings, "clicks") == {1: 2, 3: 1}
    assert aggregate_ch(s3_settings, "clicks") == {1: 2, 2: 0, 3: 1}

    listing = run_cli("snapshots", "list")
    assert listing.exit_code == 0, listing.stderr
    assert f"Staged runs in s3://{s3_settings.staging_dir.bucket}/snapshots" in listing.stdout
    rows = [line.split("│") for line in listing.stdout.splitlines() if "-full" in line or "-incremental" in line]
    # Run, rows, quarantined, parts, committed: 2+3+4+2 rows in 4 parts, then 1+1 in 2.
    assert [[cell.strip() for cell in row[2:6]] for row in rows] == [["11", "0", "4", "yes"], ["2", "0", "2", "yes"]]

    reconciled = run_cli("reconcile")
    assert reconciled.exit_code == 0, reconciled.stdout + reconciled.stderr
    text = " ".join(reconciled.stdout.replace("│", " ").split())
    assert "rows impressions pass Postgres 5 = ClickHouse 5 + quarantined 0 = snapshots 5 + quarantined 0" in text

    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (NULL, '2026-11-22 13:00:00')")  # id 6
    sync_ok()
    assert quarantined_rows(s3_settings) == {"impressions": 1}  # read back from the quarantine part on S3


def test_a_retried_s3_load_counts_once(
    s3_settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run loaded but not committed (a crash) is loaded again by the next sync: the tokens drop the repeat."""
    import pipeline.sync.execute as sync_module

    seed_hand_built(pg)
    sync_ok("--mode", "full")
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-22 12:00:00')")
    real_commit = sync_module.commit

    def crash(*_args: object) -> None:
        raise RuntimeError("killed between load and commit")

    monkeypatch.setattr(sync_module, "commit", crash)
    with pytest.raises(RuntimeError):
        run_cli("sync")
    assert per_campaign_ch(s3_settings, "impressions") == {1: 3, 2: 2}  # loaded, not committed
    monkeypatch.setattr(sync_module, "commit", real_commit)
    result = run_cli("sync", "--json")  # loads that run again from S3, then syncs (nothing new)
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["recovered_runs"]) == 1
    assert per_campaign_ch(s3_settings, "impressions") == {1: 3, 2: 2}
    assert aggregate_ch(s3_settings, "impressions") == {1: 3, 2: 2}


@contextmanager
def s3_down_from_the_manifest(monkeypatch: pytest.MonkeyPatch, bucket: str) -> Iterator[list[str]]:
    """The S3 server refuses (403 AccessDenied) to store a run's manifest.json in `bucket`, and from then on every
    write and delete there, as if S3 went away at the commit point, until the block ends.

    Injected in moto's backend, behind its HTTP interface: adpipe sees the server's answer, through pyarrow, as it
    would AWS's. An object is stored by `put_object` whether uploaded in one PUT or completed as a multipart upload
    (as pyarrow uploads the manifest). Yields the keys refused, in order.
    """
    from moto.s3.exceptions import S3AccessDeniedError
    from moto.s3.models import S3Backend

    refused: list[str] = []

    def refusing(method: Callable[..., Any], key_of: Callable[[tuple], str]) -> Callable[..., Any]:
        def call(self: S3Backend, bucket_name: str, *args: Any, **kwargs: Any) -> Any:
            key = key_of(args)
            if bucket_name == bucket and (refused or key.endswith("/manifest.json")):
                refused.append(key)
                raise S3AccessDeniedError
            return method(self, bucket_name, *args, **kwargs)

        return call

    def keys(args: tuple) -> str:
        return " ".join(item["Key"] for item in args[0])

    with monkeypatch.context() as patch:
        patch.setattr(S3Backend, "put_object", refusing(S3Backend.put_object, lambda args: args[0]))
        patch.setattr(S3Backend, "delete_object", refusing(S3Backend.delete_object, lambda args: args[0]))
        patch.setattr(S3Backend, "delete_objects", refusing(S3Backend.delete_objects, keys))
        yield refused


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_a_failed_manifest_put_publishes_nothing_and_the_next_sync_removes_the_parts(
    s3_settings: Settings, pg: psycopg.Connection, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """On S3 storing the manifest is the commit point. When it fails (and S3 stays away, so the failed sync cannot
    delete its parts): one error line, no run listed, the warehouse as before; the next sync deletes the parts
    left behind and ends equal to the source."""
    seed_hand_built(pg)
    sync_ok("--mode", "full")
    (first,) = list_runs(s3_settings.staging_dir)
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (3, '2026-11-22 12:00:00')")  # id 5
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (3, '2026-11-22 12:00:10')")  # id 3

    with s3_down_from_the_manifest(monkeypatch, s3_settings.staging_dir.bucket) as refused:
        result = run_cli("sync", "--mode", mode)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    failed = refused[0].split("/")[1]  # snapshots/<run id>/manifest.json
    assert refused[0] == f"snapshots/{failed}/manifest.json"
    assert f"error: S3 staging s3://{s3_settings.staging_dir.bucket}/snapshots/{failed}/manifest.json:" in result.stderr
    assert "Access Denied" in result.stderr
    assert SECRET not in result.stderr
    # Not a run: only the first is listed, and the state still names it. What the failed sync wrote is left over.
    assert [run.run_id for run in list_runs(s3_settings.staging_dir)] == [first.run_id]
    assert load_state(s3_settings.home).last_run_id == first.run_id
    tables = ["clicks", "impressions"] if mode == "incremental" else ["advertiser", "campaign", "clicks", "impressions"]
    assert [key for key in objects(s3_endpoint, s3_settings) if key.startswith(failed)] == [
        f"{failed}/{table}/part-00000.parquet" for table in tables
    ]
    assert ch(s3_settings, f"SELECT DISTINCT status FROM sync_runs FINAL WHERE run_id = '{failed}'") == [("failed",)]
    # The warehouse is as the first sync left it (seed_hand_built's rows).
    assert per_campaign_ch(s3_settings, "impressions") == {1: 3, 2: 1}
    assert per_campaign_ch(s3_settings, "clicks") == {1: 2}
    assert aggregate_ch(s3_settings, "impressions") == {1: 3, 2: 1}

    sync_ok()
    assert not [key for key in objects(s3_endpoint, s3_settings) if key.startswith(failed)]
    assert len(list_runs(s3_settings.staging_dir)) == 2
    assert per_campaign_ch(s3_settings, "impressions") == {1: 3, 2: 1, 3: 1}
    assert per_campaign_ch(s3_settings, "clicks") == {1: 2, 3: 1}
    assert aggregate_ch(s3_settings, "impressions") == {1: 3, 2: 1, 3: 1}
    assert aggregate_ch(s3_settings, "clicks") == {1: 2, 2: 0, 3: 1}
    # A failed full sync drops the shadow database it was loading.
    shadow = f"{s3_settings.clickhouse_database}__shadow"
    assert clickhouse.connect(s3_settings).command(f"EXISTS DATABASE `{shadow}`") == 0


def test_a_part_of_several_insert_blocks_failed_after_the_first_is_counted_once(
    s3_settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part ClickHouse inserts as four blocks, whose load failed after some of them went in, is loaded again by
    the next sync: the token deduplicates block by block (as each retry cuts the part the same way), so every row
    counts once, in the table and in the aggregates."""
    import pipeline.sync.load as load_module

    seed_hand_built(pg)
    sync_ok("--mode", "full")
    # ClickHouse reads a part in blocks of up to 65,409 rows and squashes them into insert blocks of ~1M rows (or
    # 256 MiB): a part of more rows than that is several blocks. Here blocks of 4 rows stand in for them.
    blocks = {
        "input_format_parquet_max_block_size": 4,
        "min_insert_block_size_rows": 4,
        "min_insert_block_size_bytes": 0,
    }
    for name, value in blocks.items():
        monkeypatch.setitem(load_module._INSERT_SETTINGS, name, value)
    pg.execute(  # ids 5-20, one part of four blocks: ids 5-8, 9-12, 13-16, 17-20
        "INSERT INTO impressions (campaign_id, created_at) "
        "SELECT 3, '2026-11-22 12:00:00'::timestamp + i * interval '1 minute' FROM generate_series(1, 16) AS i"
    )
    client = clickhouse.connect(s3_settings)
    client.command("ALTER TABLE impressions ADD CONSTRAINT refuse_id_17 CHECK id != 17")  # the server fails block 4

    failed = run_cli("sync")
    assert failed.exit_code == 1
    assert failed.stderr.count("\n") == 1, failed.stderr
    assert "Constraint `refuse_id_17`" in failed.stderr
    # Some whole blocks went in before the failure (how many the server had committed by then), not the part.
    loaded = [row_id for (row_id,) in ch(s3_settings, "SELECT id FROM impressions WHERE campaign_id = 3 ORDER BY id")]
    assert loaded in ([*range(5, 9)], [*range(5, 13)], [*range(5, 17)]), loaded
    assert aggregate_ch(s3_settings, "impressions") == {1: 3, 2: 1, 3: len(loaded)}

    client.command("ALTER TABLE impressions DROP CONSTRAINT refuse_id_17")
    result = run_cli("sync", "--json")  # loads the failed run again, from S3, then syncs (nothing new)
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["recovered_runs"]) == 1
    once = "SELECT id, count() FROM impressions WHERE campaign_id = 3 GROUP BY id ORDER BY id"
    assert ch(s3_settings, once) == [(row_id, 1) for row_id in range(5, 21)]
    assert per_campaign_ch(s3_settings, "impressions") == {1: 3, 2: 1, 3: 16}
    assert aggregate_ch(s3_settings, "impressions") == {1: 3, 2: 1, 3: 16}
    assert ch(s3_settings, "SELECT sum(impressions) FROM campaign_hourly WHERE campaign_id = 3") == [(16,)]


def test_verify_replay_and_prune_on_s3(s3_settings: Settings, pg: psycopg.Connection, s3_endpoint: str) -> None:
    seed_hand_built(pg)
    sync_ok("--mode", "full")
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (2, '2026-11-22 12:00:00')")
    sync_ok()
    pg.execute("UPDATE campaign SET name = 'Renamed' WHERE id = 1")
    sync_ok("--keep", "2")  # the first full run is the base of the warehouse: nothing may go
    assert len(list_runs(s3_settings.staging_dir)) == 3

    verified = run_cli("snapshots", "verify")
    assert verified.exit_code == 0, verified.stderr
    assert "All 6 parts of 3 runs match their checksums." in verified.stdout

    client = clickhouse.connect(s3_settings)
    for table in ("impressions", "campaign_daily", "campaign"):
        client.command(f"TRUNCATE TABLE {table}")
    replayed = run_cli("replay")
    assert replayed.exit_code == 0, replayed.stderr
    assert "Replayed 3 runs" in replayed.stdout
    assert per_campaign_ch(s3_settings, "impressions") == {1: 3, 2: 2}
    assert aggregate_ch(s3_settings, "impressions") == {1: 3, 2: 2}
    assert ch(s3_settings, "SELECT name FROM campaign FINAL WHERE id = 1") == [("Renamed",)]

    sync_ok("--mode", "full")
    pruned = run_cli("snapshots", "prune", "--keep", "1")
    assert pruned.exit_code == 0, pruned.stderr
    assert "Removed 3 staged runs." in pruned.stdout
    (kept,) = list_runs(s3_settings.staging_dir)
    assert kept.mode == "full"
    assert {key.split("/")[0] for key in objects(s3_endpoint, s3_settings)} == {kept.run_id, "adpipe-home.json"}

    fs = raw_s3(s3_endpoint)
    part = f"{kept.directory}/clicks/part-00000.parquet"
    with fs.open_input_stream(part) as stream:
        data = stream.read()
    with fs.open_output_stream(part) as stream:
        stream.write(data[:-1] + b"\x00")
    damaged = run_cli("snapshots", "verify")
    assert damaged.exit_code == 1
    assert f"{kept.run_id}/clicks/part-00000.parquet: sha256" in damaged.stderr
    fs.delete_file(part)
    missing = run_cli("snapshots", "verify")
    assert missing.exit_code == 1
    assert f"{kept.run_id}/clicks/part-00000.parquet: missing" in missing.stderr


def test_a_run_without_manifest_is_interrupted_and_removed(
    s3_settings: Settings, pg: psycopg.Connection, s3_endpoint: str
) -> None:
    """On S3 the manifest, written last, is the commit point: parts without it are not a run."""
    seed_hand_built(pg)
    writer = RunWriter(s3_settings.staging_dir, "20261101T000000000000Z-full")
    writer.write_part("impressions", pa.table({"id": pa.array([1], pa.uint64())}))
    fs = raw_s3(s3_endpoint)
    with fs.open_output_stream(f"{writer.store.root}/referral_events/day=2026-11-01/part-x.parquet") as stream:
        stream.write(b"not a run")
    assert list_runs(s3_settings.staging_dir) == []
    assert "20261101T000000000000Z" not in run_cli("snapshots", "list").stdout

    sync_ok("--mode", "full")
    keys = objects(s3_endpoint, s3_settings)
    assert not [key for key in keys if key.startswith("20261101T")]
    assert "referral_events/day=2026-11-01/part-x.parquet" in keys
    assert per_campaign_ch(s3_settings, "impressions") == {1: 3, 2: 1}


def test_credentials_never_reach_the_output(
    s3_settings: Settings, pg: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither printed nor logged, at any level. Under pytest the records go to caplog, not to the CLI's stderr
    (`-vv`'s handler is only installed when the root logger has none), so both are searched."""
    caplog.set_level(logging.DEBUG)
    seed_hand_built(pg)
    result = run_cli("-vv", "sync", "--mode", "full")
    assert result.exit_code == 0, result.stderr
    assert "loading part-00000.parquet into" in caplog.text  # debug records were captured
    assert SECRET not in result.stdout + result.stderr + caplog.text


@pytest.mark.parametrize("command", [("sync",), ("snapshots", "list"), ("snapshots", "verify"), ("replay",)])
def test_unreachable_endpoint_is_one_line(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    result = run_cli(*command)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"cannot reach S3 staging {s3_settings.staging_dir} at http://127.0.0.1:1" in result.stderr
    assert SECRET not in result.stderr


def test_missing_bucket_is_one_line(s3_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADPIPE_STAGING_DIR", "s3://no-such-bucket/runs")
    result = run_cli("sync")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "S3 staging s3://no-such-bucket/runs: bucket 'no-such-bucket' does not exist" in result.stderr


def test_a_part_clickhouse_cannot_read_is_one_line_without_the_secret(
    s3_settings: Settings, pg: psycopg.Connection, s3_endpoint: str
) -> None:
    seed_hand_built(pg)
    sync_ok("--mode", "full")
    (run,) = list_runs(s3_settings.staging_dir)
    raw_s3(s3_endpoint).delete_file(f"{run.directory}/impressions/part-00000.parquet")
    result = run_cli("replay")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "impressions/part-00000.parquet" in result.stderr
    assert SECRET not in result.stderr
    assert per_campaign_ch(s3_settings, "impressions") == {1: 3, 2: 1}  # the failed replay's shadow never swapped in


def test_a_prefix_with_wildcards_is_refused(s3_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADPIPE_STAGING_DIR", f"s3://{s3_settings.staging_dir.bucket}/runs-{{a,b}}")
    result = run_cli("snapshots", "list")
    assert result.exit_code == 1
    assert "the prefix must not contain * ? { or }" in result.stderr


def test_an_s3_url_without_bucket_is_refused(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:  # undone before the fixture's teardown reads the settings
        patch.setenv("ADPIPE_STAGING_DIR", "s3:///runs")
        result = run_cli("snapshots", "list")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "ADPIPE_STAGING_DIR 's3:///runs' names no bucket: expected s3://bucket/prefix" in result.stderr


def staged_objects(endpoint: str, settings: Settings) -> tuple[list[str], list[str]]:
    """(event parts, quarantine files) on S3, as keys relative to the staging prefix, each checked by name; beside
    them only the marker of the home the prefix belongs to."""
    keys = objects(endpoint, settings)
    parts = [key for key in keys if key.startswith("referral_events/")]
    quarantine = [key for key in keys if key.startswith("referral_quarantine/")]
    assert sorted(["adpipe-home.json", *parts, *quarantine]) == keys  # nothing else
    assert all(re.fullmatch(r"referral_events/day=2022-01-05/part-[0-9a-f]{24}\.parquet", key) for key in parts), parts
    assert all(re.fullmatch(r"referral_quarantine/[0-9a-f]{24}\.parquet", key) for key in quarantine), quarantine
    return parts, quarantine


def read_objects(endpoint: str, settings: Settings, keys: list[str]) -> pa.Table:
    """The Parquet objects as stored, read without adpipe's code."""
    root = f"{settings.staging_dir.bucket}/{settings.staging_dir.prefix}"
    return pa.concat_tables(pq.read_table(f"{root}/{key}", filesystem=raw_s3(endpoint)) for key in keys)


def nothing_local(settings: Settings) -> None:
    """The test's directory holds no staging: the events and their quarantine went to S3 only."""
    assert not (settings.home.parent / "staging").exists()
    assert not list(settings.home.parent.rglob("referral_*"))


@pytest.mark.parametrize("mode", [LoadMode.BATCH, LoadMode.STREAM])
def test_events_load_stages_on_s3(s3_settings: Settings, tmp_path: Path, s3_endpoint: str, mode: LoadMode) -> None:
    summary = load_files(s3_settings, [write(tmp_path / "events.jsonl", LINES)], mode, 300, block_bytes=300)
    assert reports(s3_settings) == EXPECTED
    assert (summary.lines, summary.valid, summary.staged, summary.duplicates) == (19, 13, 13, 2)
    assert summary.quarantined == QUARANTINED
    assert quarantine_reasons(s3_settings.staging_dir) == QUARANTINED

    parts, quarantine = staged_objects(s3_endpoint, s3_settings)
    # Batch mode stages the file's one day in one part; stream mode (300-byte chunks) in one part per chunk.
    assert len(parts) == 1 if mode is LoadMode.BATCH else len(parts) > 1
    assert len(quarantine) == 1
    staged = read_objects(s3_endpoint, s3_settings, parts)
    assert staged.column_names == ["event_id", "customer_id", "user_id", "fired_at", "event_type"]
    assert sorted(staged.column("event_id").to_pylist()) == sorted(
        ["e1", "e1", "e2", "x3", "e4", "x5", "e11", "e11", "e12", "x13", "e6", "e6", "x7"]
    )
    lines = read_objects(s3_endpoint, s3_settings, quarantine).sort_by("line_number")
    assert lines.column("line_number").to_pylist() == [8, 14, 15, 16]

    # ClickHouse got the staged events (sent as bytes read from S3) and computes the same reports.
    client = clickhouse.connect(s3_settings)
    assert client.command("SELECT count() FROM referral_events") == 13
    assert warehouse_hourly_reports(client, timedelta(seconds=300)).rows() == [row[:6] for row in EXPECTED]
    nothing_local(s3_settings)


def test_same_events_file_twice_on_s3_changes_nothing(s3_settings: Settings, tmp_path: Path, s3_endpoint: str) -> None:
    path = write(tmp_path / "events.jsonl", LINES)
    load_files(s3_settings, [path])
    before = objects(s3_endpoint, s3_settings)
    again = load_files(s3_settings, [path], LoadMode.STREAM)
    assert (again.valid, again.staged) == (13, 0)
    assert reports(s3_settings) == EXPECTED
    assert objects(s3_endpoint, s3_settings) == before  # same parts; the file's quarantine replaced in place
    assert quarantine_reasons(s3_settings.staging_dir) == QUARANTINED  # not counted twice
    assert clickhouse.connect(s3_settings).command("SELECT count() FROM referral_events") == 13
    nothing_local(s3_settings)


@pytest.mark.parametrize("order", ["loads first", "clicks first"])
def test_two_events_files_in_either_order_on_s3(
    s3_settings: Settings, tmp_path: Path, s3_endpoint: str, order: str
) -> None:
    # Every related click needs the other file: the second load recomputes its hours from the events on S3.
    loads = write(tmp_path / "loads.jsonl", [line for line in LINES if CL not in line])
    clicks = write(tmp_path / "clicks.jsonl", [line for line in LINES if CL in line] + [LINES[0]])
    for path in [loads, clicks] if order == "loads first" else [clicks, loads]:
        load_files(s3_settings, [path], LoadMode.STREAM)
    assert reports(s3_settings) == EXPECTED
    # Lines 8, 15 and 16 are in the loads file, line 14 (a click) in the clicks file, whose last line (line 1's
    # page load, 10:00) comes after 11:10 in stream mode: 70 min behind, late.
    assert quarantine_reasons(s3_settings.staging_dir) == {**QUARANTINED, "late": 1}
    _parts, quarantine = staged_objects(s3_endpoint, s3_settings)
    assert len(quarantine) == 2
    client = clickhouse.connect(s3_settings)
    assert client.command("SELECT count() FROM referral_events") == 13
    assert warehouse_hourly_reports(client, timedelta(seconds=300)).rows() == [row[:6] for row in EXPECTED]
    nothing_local(s3_settings)


def test_events_load_with_unreachable_s3_is_one_line(
    s3_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    result = run_cli("events", "load", str(write(tmp_path / "events.jsonl", LINES)))
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"cannot reach S3 staging {s3_settings.staging_dir} at http://127.0.0.1:1" in result.stderr
    assert SECRET not in result.stderr
    assert reports(s3_settings) == []
