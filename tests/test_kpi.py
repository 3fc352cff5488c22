"""KPIs on a hand-built dataset whose answers are written here, worked out by hand from the rows below.

The dataset (all times UTC):
- advertisers 1 Acme, 2 Globex, 3 Initech (deleted after the first sync, with its campaign and events);
- campaign 1 'Alpha' (Acme, bid 2.00, budget 5.00, flight 2026-01-01..10), renamed after the first sync to a
  name longer than chstats' column, without touching updated_at;
- campaign 2 'Beta' (Acme, bid 0.50, budget 50.00, flight 2026-01-01..04), delivering after its flight;
- campaign 3 'Gamma' (Globex, bid 1.00, budget 200.00, flight 2026-01-02..31): no impressions at all;
- campaign 4 'Delta' (Initech): 10 impressions, 5 clicks on 2026-01-05, all deleted with its advertiser;
- campaign 5 'Broken' (Acme, bid 0.00): quarantined by the sync, so its 3 impressions never count.
Campaign 1 has 5 impressions on 2026-01-05 (the last at 23:59:59.999999) and 5 on 2026-01-06 (the first at
00:00:00), 2 clicks on the 5th and 1 on the 6th. Campaign 2 has 4 impressions and 1 click on 2026-01-06 and one
click on 2026-01-07, a day without impressions.
"""

from __future__ import annotations

import json
from datetime import date

import polars as pl
import psycopg
import pytest

from pipeline.analytics.kpi import Filters, compute
from pipeline.analytics.reconcile import reconcile
from pipeline.config import Settings
from pipeline.options import Mode
from pipeline.source.generate import Generator
from pipeline.sync.run import SyncOptions, sync
from pipeline.warehouse import client as clickhouse
from tests.conftest import run_cli

pytestmark = pytest.mark.warehouses  # each test that uses `settings` runs on chdb, http and server

LONG_NAME = "Alpha Prime Super Long Campaign Name"
AS_OF = date(2026, 1, 6)


def build_dataset(pg: psycopg.Connection) -> None:
    pg.execute(
        "INSERT INTO advertiser (id, name, updated_at) VALUES "
        "(1, 'Acme', '2026-01-01'), (2, 'Globex', '2026-01-01'), (3, 'Initech', '2026-01-01')"
    )
    pg.execute(
        "INSERT INTO campaign (id, name, bid, budget, start_date, end_date, advertiser_id, updated_at) VALUES "
        "(1, 'Alpha', 2.00, 5.00, '2026-01-01', '2026-01-10', 1, '2026-01-01'),"
        "(2, 'Beta', 0.50, 50.00, '2026-01-01', '2026-01-04', 1, '2026-01-01'),"
        "(3, 'Gamma', 1.00, 200.00, '2026-01-02', '2026-01-31', 2, '2026-01-01'),"
        "(4, 'Delta', 1.00, 100.00, '2026-01-01', '2026-01-31', 3, '2026-01-01'),"
        "(5, 'Broken', 0.00, 100.00, '2026-01-01', '2026-01-31', 1, '2026-01-01')"
    )
    # Initech's rows come first: deleting the newest ids would look like a source reset to the sync.
    impressions = (
        [(4, "2026-01-05 09:00:00")] * 10
        + [(1, "2026-01-05 10:00:00")] * 4
        + [(1, "2026-01-05 23:59:59.999999"), (1, "2026-01-06 00:00:00")]
        + [(1, "2026-01-06 12:00:00")] * 4
        + [(2, "2026-01-06 08:00:00")] * 4
        + [(5, "2026-01-05 09:00:00")] * 3
    )
    clicks = (
        [(4, "2026-01-05 09:00:30")] * 5
        + [(1, "2026-01-05 10:00:30")] * 2
        + [(1, "2026-01-06 00:00:30"), (2, "2026-01-06 08:01:00"), (2, "2026-01-07 00:00:10")]
    )
    for table, rows in (("impressions", impressions), ("clicks", clicks)):
        with pg.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} (id, campaign_id, created_at) VALUES (%s, %s, %s)",
                [(i, c, t) for i, (c, t) in enumerate(rows, start=1)],
            )


def rename_and_delete(pg: psycopg.Connection) -> None:
    """The rename keeps updated_at; the delete removes Initech with everything that references it."""
    pg.execute("UPDATE campaign SET name = %s WHERE id = 1", (LONG_NAME,))
    pg.execute("DELETE FROM clicks WHERE campaign_id = 4")
    pg.execute("DELETE FROM impressions WHERE campaign_id = 4")
    pg.execute("DELETE FROM campaign WHERE id = 4")
    pg.execute("DELETE FROM advertiser WHERE id = 3")


@pytest.fixture
def synced(settings: Settings, pg: psycopg.Connection) -> Settings:
    build_dataset(pg)
    sync(settings, SyncOptions(mode=Mode.FULL))
    rename_and_delete(pg)
    sync(settings, SyncOptions(mode=Mode.INCREMENTAL))
    return settings


def rows(settings: Settings, name: str, **filters: object) -> list[tuple]:
    return compute(settings, name, Filters(**filters)).rows()


def test_seed_kpis_before_the_rename_and_delete(settings: Settings, pg: psycopg.Connection) -> None:
    build_dataset(pg)
    sync(settings, SyncOptions(mode=Mode.FULL))
    assert rows(settings, "campaign_ctr") == [
        (1, "Alpha", 10, 3, 0.3),
        (2, "Beta", 4, 2, 0.5),
        (3, "Gamma", 0, 0, None),
        (4, "Delta", 10, 5, 0.5),
    ]
    assert rows(settings, "advertiser_ctr") == [
        (1, "Acme", 14, 5, 5 / 14),
        (2, "Globex", 0, 0, None),
        (3, "Initech", 10, 5, 0.5),
    ]


def test_campaign_ctr(synced: Settings) -> None:
    assert rows(synced, "campaign_ctr") == [
        (1, LONG_NAME, 10, 3, 0.3),
        (2, "Beta", 4, 2, 0.5),
        (3, "Gamma", 0, 0, None),
    ]


def test_daily_impressions_clicks_splits_days_at_utc_midnight(synced: Settings) -> None:
    assert rows(synced, "daily_impressions_clicks") == [
        (date(2026, 1, 5), 5, 2, 0.4),
        (date(2026, 1, 6), 9, 2, 2 / 9),
        (date(2026, 1, 7), 0, 1, None),
    ]


def test_advertiser_ctr_without_the_deleted_advertiser(synced: Settings) -> None:
    assert rows(synced, "advertiser_ctr") == [(1, "Acme", 14, 5, 5 / 14), (2, "Globex", 0, 0, None)]


def test_filters_are_applied(synced: Settings) -> None:
    assert rows(synced, "campaign_ctr", from_date=date(2026, 1, 6), to_date=date(2026, 1, 6)) == [
        (1, LONG_NAME, 5, 1, 0.2),
        (2, "Beta", 4, 1, 0.25),
        (3, "Gamma", 0, 0, None),
    ]
    assert rows(synced, "advertiser_ctr", advertiser_id=2) == [(2, "Globex", 0, 0, None)]
    assert rows(synced, "daily_impressions_clicks", campaign_id=2) == [
        (date(2026, 1, 6), 4, 1, 0.25),
        (date(2026, 1, 7), 0, 1, None),
    ]


def test_budget_pacing(synced: Settings) -> None:
    frame = compute(synced, "budget_pacing", Filters(to_date=AS_OF))
    got = frame.select(
        "campaign_id",
        "clicks",
        pl.col("spend").cast(pl.Float64),
        "utilization",
        "flight_days",
        "days_elapsed",
        "days_remaining",
        "projected_spend",
        "over_budget",
    ).rows()
    assert got == [
        # 3 clicks × 2.00 = 6.00 of a 5.00 budget after 6 of 10 days: 6 / 6 × 10 = 10.00 projected.
        (1, 3, 6.0, 1.2, 10, 6, 4, pytest.approx(10.0), True),
        # Both clicks fall after the 4-day flight ended, so nothing is spent within it.
        (2, 0, 0.0, 0.0, 4, 4, 0, 0.0, False),
        (3, 0, 0.0, 0.0, 30, 5, 25, 0.0, False),
    ]


def test_effective_cpm_and_cpc(synced: Settings) -> None:
    got = compute(synced, "effective_cpm_cpc", Filters()).with_columns(pl.col("spend").cast(pl.Float64)).rows()
    assert got == [
        (1, LONG_NAME, 10, 3, 6.0, 600.0, 2.0),
        (2, "Beta", 4, 2, 1.0, 250.0, 0.5),
        (3, "Gamma", 0, 0, 0.0, None, None),
    ]


def test_flight_delivery_flags(synced: Settings) -> None:
    got = compute(synced, "flight_delivery", Filters(to_date=AS_OF)).drop("campaign_name", "start_date", "end_date")
    assert got.rows() == [
        (1, "active", 10, 0, 10, False, False),
        (2, "ended", 0, 4, 4, True, False),
        (3, "active", 0, 0, 0, False, True),
    ]


def test_ctr_ranking_by_wilson_lower_bound(synced: Settings) -> None:
    got = compute(synced, "ctr_ranking", Filters(min_impressions=1)).rows()
    # Wilson 95% for 2 of 4: [0.150036, 0.849964]; for 3 of 10: [0.107789, 0.603227].
    assert [r[:6] for r in got] == [(1, 2, "Beta", 4, 2, 0.5), (2, 1, LONG_NAME, 10, 3, 0.3)]
    assert [r[6:] for r in got] == [
        (pytest.approx(0.150036, abs=1e-6), pytest.approx(0.849964, abs=1e-6)),
        (pytest.approx(0.107789, abs=1e-6), pytest.approx(0.603227, abs=1e-6)),
    ]
    assert rows(synced, "ctr_ranking") == [], "the default threshold of 100 impressions ranks nobody here"


def test_daily_change(synced: Settings) -> None:
    got = compute(synced, "daily_change", Filters()).rows()
    assert got == [
        (date(2026, 1, 5), 5, 2, 0.4, 5, 2, None),
        (date(2026, 1, 6), 9, 2, 2 / 9, 4, 0, pytest.approx(2 / 9 - 0.4)),
        (date(2026, 1, 7), 0, 1, None, -9, -1, None),
    ]


def test_ctr_heatmap(synced: Settings) -> None:
    # 2026-01-05 is a Monday (1), 2026-01-06 a Tuesday (2), 2026-01-07 a Wednesday (3).
    assert rows(synced, "ctr_heatmap") == [
        (1, 10, 4, 2, 0.5),
        (1, 23, 1, 0, 0.0),
        (2, 0, 1, 1, 1.0),
        (2, 8, 4, 1, 0.25),
        (2, 12, 4, 0, 0.0),
        (3, 0, 0, 1, None),
    ]


def test_reconcile_passes_once_deleted_fact_rows_left_the_warehouse(synced: Settings) -> None:
    """Initech's events were deleted in the source: the incremental sync retracted them (change capture), so the
    row counts agree with Postgres without a full sync, and so do the KPIs."""
    report = reconcile(synced)
    assert report.ok, [c for c in report.checks if not c.ok]
    assert {c.name: c.detail for c in report.checks}["rows impressions"] == (
        "Postgres 17 = ClickHouse 17 + quarantined 0 = snapshots 17 + quarantined 0"
    )


def test_reconcile_fails_when_the_warehouse_drifts(synced: Settings) -> None:
    clickhouse.connect(synced).command("INSERT INTO campaign_daily VALUES (1, '2026-01-05', 1, 0)")
    result = run_cli("reconcile")
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "kpi campaign_ctr" in result.stdout


CHSTATS = """\
=== 📊 ClickHouse Campaign CTR ===
Campaign ID  Name                 Impressions  Clicks   CTR
---------------------------------------------------------------
1            Alpha Prime Super…   10           3        30.00%
2            Beta                 4            2        50.00%
3            Gamma                0            0        n/a

=== 📅 Daily Impressions and Clicks ===
Date         Impressions  Clicks   CTR
------------------------------------------
2026-01-05   5            2        40.00%
2026-01-06   9            2        22.22%
2026-01-07   0            1        n/a

=== 📈 CTR per Advertiser ===
Advertiser ID   Name                 Impressions  Clicks   CTR
------------------------------------------------------------------
1               Acme                 14           5        35.71%
2               Globex               0            0        n/a
"""


def test_chstats_prints_the_seed_layout(synced: Settings) -> None:
    result = run_cli("chstats")
    assert result.exit_code == 0
    assert result.stdout == CHSTATS


def test_kpi_csv_json_and_parquet(synced: Settings, tmp_path) -> None:
    csv = run_cli("kpi", "campaign_ctr", "--format", "csv")
    assert csv.exit_code == 0
    assert csv.stdout.splitlines() == [
        "campaign_id,campaign_name,impressions,clicks,ctr",
        f"1,{LONG_NAME},10,3,0.3",
        "2,Beta,4,2,0.5",
        "3,Gamma,0,0,",
    ]
    as_json = run_cli("kpi", "daily_impressions_clicks", "--format", "json", "--from", "2026-01-07")
    assert json.loads(as_json.stdout) == [{"date": "2026-01-07", "impressions": 0, "clicks": 1, "ctr": None}]
    out = tmp_path / "pacing.parquet"
    written = run_cli("kpi", "budget_pacing", "--to", "2026-01-06", "--out", str(out))
    assert written.exit_code == 0
    assert pl.read_parquet(out)["spend"].cast(pl.Float64).to_list() == [6.0, 0.0, 0.0]
    assert not list(tmp_path.glob(".pacing.parquet.*")), "no temp file left behind"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("kpi", "nope"), "unknown KPI 'nope'"),
        (("kpi", "campaign_ctr", "--from", "2026-01-07", "--to", "2026-01-06"), "--from 2026-01-07 is after --to"),
        (("kpi", "campaign_ctr", "--format", "parquet"), "--format parquet needs --out FILE"),
        (("kpi", "campaign_ctr", "--out", "x.xlsx"), "cannot tell the format from 'x.xlsx'"),
        # Deleted in the source: a mistyped or stale id is said, not answered with an empty table.
        (("kpi", "campaign_ctr", "--campaign", "4"), "--campaign 4: the warehouse has no campaign with that id"),
        (("kpi", "advertiser_ctr", "--advertiser", "99"), "--advertiser 99: the warehouse has no advertiser with"),
        # reconcile over nothing would pass every check
        (("reconcile", "--campaign", "99999"), "--campaign 99999: the warehouse has no campaign with that id"),
    ],
)
def test_kpi_bad_input_is_one_clear_line(synced: Settings, args: tuple[str, ...], message: str) -> None:
    result = run_cli(*args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_kpis_before_the_first_sync_say_what_to_do(settings: Settings) -> None:
    for args in (("chstats",), ("kpi", "campaign_ctr"), ("reconcile",)):
        result = run_cli(*args)
        assert result.exit_code == 1, args
        assert "has no KPI tables yet: run `adpipe sync --mode full`" in result.stderr, args


def test_kpi_list_names_every_kpi(settings: Settings) -> None:
    listed = run_cli("kpi", "list").stdout
    for name in (
        "campaign_ctr",
        "daily_impressions_clicks",
        "advertiser_ctr",
        "budget_pacing",
        "effective_cpm_cpc",
        "ctr_heatmap",
        "flight_delivery",
        "ctr_ranking",
        "daily_change",
    ):
        assert name in listed


@pytest.mark.warehouses("chdb", "server")  # through the HTTP double it is the same engine, 16 s slower
def test_clickhouse_and_duckdb_agree_on_a_million_impressions(settings: Settings, pg: psycopg.Connection) -> None:
    Generator(pg, seed=7).batch(advertisers=10, campaigns=10, impressions=10_000, ctr=0.05)
    sync(settings, SyncOptions(mode=Mode.FULL))
    report = reconcile(settings)
    assert report.ok, [c for c in report.checks if not c.ok]
    checks = {c.name: c.detail for c in report.checks}
    assert checks["rows impressions"].startswith("Postgres 1,000,000 = ClickHouse 1,000,000")
    assert checks["kpi campaign_ctr"] == "100 rows equal"


def test_campaigns_without_clicks_tie_in_ctr_ranking_on_both_engines(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """Without clicks, a campaign's Wilson lower bound is 0, computed as a difference of two equal terms: float
    rounding leaves a different crumb per impression count, and per engine. They must tie, ranked by campaign_id,
    in ClickHouse and in DuckDB's recomputation alike (seen: campaign 84 before 20 in DuckDB only)."""
    pg.execute("INSERT INTO advertiser (name) VALUES ('Acme')")
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id)"
        " SELECT 'c' || n, 1.00, 100.00, '2026-11-01', '2026-11-30', 1 FROM generate_series(1, 60) AS n"
    )
    pg.execute(  # campaign n: 100 + 37 n impressions, none clicked
        "INSERT INTO impressions (campaign_id, created_at)"
        " SELECT c, '2026-11-20 10:00:00' FROM generate_series(1, 60) AS c, generate_series(1, 100 + 37 * c)"
    )
    sync(settings, SyncOptions(mode=Mode.FULL))
    ranked = compute(settings, "ctr_ranking", Filters()).rows()
    assert [row[1] for row in ranked] == list(range(1, 61))
    report = reconcile(settings)
    assert {c.name: c.ok for c in report.checks}["kpi ctr_ranking"], [c for c in report.checks if not c.ok]


def test_more_clicks_than_impressions_are_ranked_with_the_bounds_of_a_ctr_of_1(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """The source does not tie clicks to impressions: 100 impressions and 101 clicks give ctr 1.01, and Wilson's
    interval of p = 1 over n = 100: low = 1 / (1 + z²/n) = 1 / 1.038416, high = 1 (not NaN, which ClickHouse
    ranked last and DuckDB first, failing reconcile)."""
    pg.execute("INSERT INTO advertiser (name) VALUES ('Acme')")
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id) VALUES"
        " ('over', 1.00, 100.00, '2026-11-01', '2026-11-30', 1), ('fair', 1.00, 100.00, '2026-11-01', '2026-11-30', 1)"
    )
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at) SELECT c, '2026-11-20 10:00:00'"
        " FROM generate_series(1, 2) AS c, generate_series(1, 100)"
    )
    pg.execute(
        "INSERT INTO clicks (campaign_id, created_at) SELECT c, timestamp '2026-11-20 10:05'"
        " FROM generate_series(1, 2) AS c, generate_series(1, 151) AS n WHERE n <= (CASE c WHEN 1 THEN 101 ELSE 50 END)"
    )
    sync(settings, SyncOptions(mode=Mode.FULL))
    (first, second) = compute(settings, "ctr_ranking", Filters()).rows()
    assert first[:6] == (1, 1, "over", 100, 101, 1.01)
    assert first[6:] == pytest.approx((1 / 1.038416, 1.0), abs=1e-12)
    assert second[:2] == (2, 2)
    report = reconcile(settings)
    assert {c.name: c.ok for c in report.checks}["kpi ctr_ranking"], [c for c in report.checks if not c.ok]


@pytest.mark.warehouses("chdb")
def test_names_from_the_data_and_the_settings_print_as_they_are(
    settings: Settings, pg: psycopg.Connection, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output goes through rich: a campaign named `[/]` (a closing tag with nothing to close) crashed the table,
    `[red]` vanished, and `:-1:` became an emoji."""
    pg.execute("INSERT INTO advertiser (name) VALUES ('Acme')")
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id)"
        " VALUES ('[/] [red]x :-1:', 1.00, 100.00, '2026-11-01', '2026-11-30', 1)"
    )
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (1, '2026-11-20 10:00:00')")
    sync(settings, SyncOptions(mode=Mode.FULL))
    shown = run_cli("kpi", "campaign_ctr")
    assert shown.exit_code == 0, shown.stderr
    assert "[/] [red]x :-1:" in shown.stdout
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_DATABASE", "new[/]db:-1:")
    refused = run_cli("kpi", "campaign_ctr")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: the warehouse (ClickHouse database 'new[/]db:-1:')"), refused.stderr


@pytest.mark.warehouses("chdb")
def test_reconcile_passes_after_a_full_sync_of_an_empty_source_and_of_campaigns_all_quarantined(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """A dimension with no valid row was staged as no file, and `reconcile` failed naming `sync --mode full`, which
    staged none again."""
    sync(settings, SyncOptions(mode=Mode.FULL))
    report = reconcile(settings)
    assert report.ok, [c for c in report.checks if not c.ok]
    pg.execute("INSERT INTO advertiser (name) VALUES ('Acme')")
    pg.execute(
        "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id)"
        " VALUES ('Free', 0.00, 100.00, '2026-11-01', '2026-11-30', 1)"  # bid 0: quarantined
    )
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (1, '2026-11-20 10:00:00')")
    result = sync(settings, SyncOptions(mode=Mode.FULL))
    assert result.tables["campaign"].quarantined == 1
    report = reconcile(settings)
    assert report.ok, [c for c in report.checks if not c.ok]
