"""Auditing staged runs: summaries, the diff of two runs and the quarantine entries, on hand-built runs
and on real syncs. Expected values are worked out by hand in the comments."""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from pipeline.analytics.audit import RunSummary, diff_runs, find_run, run_summaries
from pipeline.config import Settings
from pipeline.errors import AdpipeError
from pipeline.options import Mode
from pipeline.source.generate import Generator
from pipeline.sync.run import SyncOptions, sync
from pipeline.sync.stage import Run, RunWriter, list_runs, quarantine_entries


def ids(*values: int) -> pa.Table:
    return pa.table({"id": pa.array(values, pa.int64())})


def staged(staging: Path, run_id: str, parts: dict[str, list[pa.Table]]) -> Run:
    writer = RunWriter(staging, run_id)
    for table, tables in parts.items():
        for data in tables:
            writer.write_part(table, data)
    return writer.publish({"mode": run_id.rsplit("-", 1)[1]})


def sha256(run: Run, path: str) -> str:
    return hashlib.sha256((run.directory / path).read_bytes()).hexdigest()


def test_diff_of_hand_built_runs(tmp_path: Path) -> None:
    a = staged(
        tmp_path,
        "20260101T000000000000Z-full",
        {"impressions": [ids(1, 2, 3), ids(4, 5)], "advertiser": [ids(1, 2)]},
    )
    b = staged(
        tmp_path,
        "20260102T000000000000Z-incremental",
        # part-00000 holds the same rows as in run a, so the same bytes; part-00001 gained id 6.
        {"impressions": [ids(1, 2, 3), ids(4, 5, 6), ids(7, 8)], "clicks": [ids(10, 11)]},
    )
    diff = diff_runs(a, b)

    assert (diff.run_a, diff.run_b) == ("20260101T000000000000Z-full", "20260102T000000000000Z-incremental")
    assert [t.table for t in diff.tables] == ["advertiser", "clicks", "impressions"]
    impressions = diff.table("impressions")
    assert (impressions.rows_a, impressions.rows_b, impressions.rows_delta) == (5, 8, 3)
    assert (impressions.min_id_a, impressions.max_id_a, impressions.min_id_b, impressions.max_id_b) == (1, 5, 1, 8)
    assert impressions.parts_unchanged == ("impressions/part-00000.parquet",)
    assert impressions.parts_changed == ("impressions/part-00001.parquet",)
    assert impressions.parts_added == ("impressions/part-00002.parquet",)
    assert impressions.parts_removed == ()
    advertiser = diff.table("advertiser")  # only in run a
    assert (advertiser.rows_a, advertiser.rows_b, advertiser.rows_delta) == (2, None, -2)
    assert (advertiser.min_id_a, advertiser.max_id_a, advertiser.min_id_b, advertiser.max_id_b) == (1, 2, None, None)
    assert advertiser.parts_removed == ("advertiser/part-00000.parquet",)
    clicks = diff.table("clicks")  # only in run b
    assert (clicks.rows_a, clicks.rows_b, clicks.min_id_b, clicks.max_id_b) == (None, 2, 10, 11)
    assert clicks.parts_added == ("clicks/part-00000.parquet",)
    assert not diff.identical
    assert diff_runs(a, a).identical

    parts = diff.parts_frame()
    assert parts.select("table", "path", "status").rows() == [
        ("advertiser", "advertiser/part-00000.parquet", "removed"),
        ("clicks", "clicks/part-00000.parquet", "added"),
        ("impressions", "impressions/part-00000.parquet", "unchanged"),
        ("impressions", "impressions/part-00001.parquet", "changed"),
        ("impressions", "impressions/part-00002.parquet", "added"),
    ]
    assert parts.row(0)[3:] == (sha256(a, "advertiser/part-00000.parquet"), None)
    assert parts.row(1)[3:] == (None, sha256(b, "clicks/part-00000.parquet"))
    changed = (sha256(a, "impressions/part-00001.parquet"), sha256(b, "impressions/part-00001.parquet"))
    assert parts.row(3)[3:] == changed and changed[0] != changed[1]

    frame = diff.frame()
    assert frame.columns[:4] == ["table", "rows_a", "rows_b", "rows_delta"]
    assert frame.row(2) == ("impressions", 5, 8, 3, 1, 5, 1, 8, 1, 0, 1, 1)
    assert frame.row(0) == ("advertiser", 2, None, -2, 1, 2, None, None, 0, 1, 0, 0)
    with pytest.raises(AdpipeError, match="has a table 'campaign'"):
        diff.table("campaign")


def test_a_changed_part_is_reported_even_with_the_same_rows_and_ids(tmp_path: Path) -> None:
    a = staged(tmp_path, "20260101T000000000000Z-full", {"impressions": [ids(1, 2)]})
    b = staged(tmp_path, "20260102T000000000000Z-full", {"impressions": [ids(2, 1)]})  # same ids, other order
    impressions = diff_runs(a, b).table("impressions")
    assert (impressions.rows_a, impressions.rows_b, impressions.min_id_b, impressions.max_id_b) == (2, 2, 1, 2)
    assert impressions.parts_changed == ("impressions/part-00000.parquet",)


def test_find_run_names_the_missing_run(tmp_path: Path) -> None:
    run = staged(tmp_path, "20260101T000000000000Z-full", {"impressions": [ids(1)]})
    assert find_run(list_runs(tmp_path), run.run_id).run_id == run.run_id
    with pytest.raises(AdpipeError, match=r"no staged run '20991231T000000000000Z-full'; `adpipe snapshots list`"):
        find_run(list_runs(tmp_path), "20991231T000000000000Z-full")


def test_summaries_diff_and_quarantine_of_real_syncs(settings: Settings, pg: psycopg.Connection) -> None:
    # 1 advertiser, 1 campaign, 10 impressions (ids 1–10), 2 clicks (ids 1–2): 14 rows.
    Generator(pg, seed=1).batch(advertisers=1, campaigns=1, impressions=10, ctr=0.2)
    sync(settings, SyncOptions(mode=Mode.FULL))
    # Ids 11–13 valid, id 14 without a campaign: quarantined.
    pg.execute("INSERT INTO impressions (campaign_id, created_at) SELECT 1, now() FROM generate_series(1, 3)")
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (NULL, now())")
    sync(settings, SyncOptions(mode=Mode.INCREMENTAL))

    entries = quarantine_entries(settings)
    assert entries.select("table_name", "source_id", "reason").rows() == [("impressions", 14, "campaign_id is NULL")]
    assert '"id":14' in entries["row"][0]
    # The row fixed in the source: its quarantine entry is resolved, and nothing more is set aside.
    pg.execute("UPDATE impressions SET campaign_id = 1 WHERE id = 14")
    sync(settings, SyncOptions(mode=Mode.INCREMENTAL))

    summaries = run_summaries(settings)
    assert [(s.mode, s.rows, s.quarantined, s.committed) for s in summaries] == [
        ("full", 14, 0, True),
        ("incremental", 3, 1, True),
        ("incremental", 1, 0, True),
    ]
    assert all(isinstance(s, RunSummary) for s in summaries)

    full, incremental, _ = list_runs(settings.staging_dir)
    impressions = diff_runs(full, incremental).table("impressions")
    assert (impressions.rows_a, impressions.rows_b) == (10, 3)
    assert (impressions.min_id_a, impressions.max_id_a, impressions.min_id_b, impressions.max_id_b) == (1, 10, 11, 13)
    assert impressions.parts_changed == ("impressions/part-00000.parquet",)

    assert quarantine_entries(settings).is_empty()


def test_two_full_syncs_of_the_same_source_differ_in_nothing(settings: Settings, pg: psycopg.Connection) -> None:
    Generator(pg, seed=2).batch(advertisers=1, campaigns=2, impressions=5, ctr=0.2)
    sync(settings, SyncOptions(mode=Mode.FULL))
    sync(settings, SyncOptions(mode=Mode.FULL))
    first, second = list_runs(settings.staging_dir)
    diff = diff_runs(first, second)
    assert diff.identical
    assert diff.table("impressions").rows_b == 10  # 2 campaigns × 5


def test_no_quarantine_before_the_first_sync(settings: Settings) -> None:
    entries = quarantine_entries(settings)
    assert entries.columns == ["table_name", "source_id", "reason", "row"]
    assert entries.height == 0
