"""The seed's data generator: realistic advertisers, campaigns, impressions and clicks, written with COPY.

Every public function validates its input first and writes in one transaction, so bad input
leaves the tables exactly as they were.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import psycopg
from faker import Faker

from pipeline.errors import AdpipeError
from pipeline.postgres import SOURCE_TABLES

IMPRESSION_SPREAD = timedelta(days=7)
CLICK_DELAY_SECONDS = (1, 120)
BID_RANGE = (0.50, 5.00)
BUDGET_RANGE = (50.0, 500.0)
FLIGHT_DAYS = (7, 30)
FLIGHT_START_MAX_DAYS_AGO = 14


@dataclass(frozen=True)
class BatchResult:
    advertisers: int
    campaigns: int
    impressions: int
    clicks: int


class Generator:
    """Writes generated rows into the source tables; `seed` makes a run reproducible."""

    def __init__(self, conn: psycopg.Connection, seed: int | None = None, now: datetime | None = None) -> None:
        self.conn = conn
        self.rng = np.random.default_rng(seed)
        self.faker = Faker()
        self.faker.seed_instance(seed)
        self.now = now or datetime.now(UTC).replace(tzinfo=None)

    def batch(self, advertisers: int, campaigns: int, impressions: int, ctr: float) -> BatchResult:
        """Advertisers, each with `campaigns` campaigns of `impressions` impressions, clicked at `ctr`."""
        _check_count("--advertisers", advertisers)
        _check_count("--campaigns", campaigns)
        _check_count("--impressions", impressions)
        _check_ratio("--ctr", ctr)
        with self.conn.transaction():
            advertiser_ids = self._insert_advertisers(advertisers)
            campaign_ids = [cid for aid in advertiser_ids for cid in self._insert_campaigns(aid, campaigns)]
            clicks = 0
            for campaign_id in campaign_ids:
                times = self._insert_impressions(campaign_id, impressions)
                clicks += self._insert_clicks(campaign_id, times, ctr)
        return BatchResult(len(advertiser_ids), len(campaign_ids), len(campaign_ids) * impressions, clicks)

    def advertisers(self, count: int) -> list[int]:
        _check_count("--count", count)
        with self.conn.transaction():
            return self._insert_advertisers(count)

    def campaigns(self, advertiser_id: int, count: int) -> list[int]:
        _check_count("--count", count)
        with self.conn.transaction():
            self._require("advertiser", advertiser_id, "--advertiser-id")
            return self._insert_campaigns(advertiser_id, count)

    def impressions(self, campaign_id: int, count: int) -> int:
        _check_count("--count", count)
        with self.conn.transaction():
            self._require("campaign", campaign_id, "--campaign-id")
            return len(self._insert_impressions(campaign_id, count))

    def clicks(self, campaign_id: int, ratio: float) -> int:
        """Clicks on round(ratio × impressions) distinct impressions the campaign already has."""
        _check_ratio("--ratio", ratio)
        with self.conn.transaction():
            self._require("campaign", campaign_id, "--campaign-id")
            rows = self.conn.execute(
                "SELECT created_at FROM impressions WHERE campaign_id = %s ORDER BY id", (campaign_id,)
            ).fetchall()
            times = np.array([r[0] for r in rows], dtype="datetime64[us]")
            return self._insert_clicks(campaign_id, times, ratio)

    def _require(self, table: str, row_id: int, option: str) -> None:
        # FOR KEY SHARE keeps the parent from being deleted before our rows commit.
        found = self.conn.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR KEY SHARE", (row_id,)).fetchone()
        if found is None:
            raise AdpipeError(f"{option} {row_id}: no {table} with that id")

    def _insert_advertisers(self, count: int) -> list[int]:
        names = [self.faker.company()[:255] for _ in range(count)]
        now = self.now
        return self._insert_returning(
            "INSERT INTO advertiser (name, updated_at, created_at) "
            "SELECT name, %s, %s FROM unnest(%s::text[]) AS t(name) RETURNING id",
            (now, now, names),
        )

    def _insert_campaigns(self, advertiser_id: int, count: int) -> list[int]:
        today = self.now.date()
        names, bids, budgets, starts, ends = [], [], [], [], []
        for _ in range(count):
            start = today - timedelta(days=int(self.rng.integers(0, FLIGHT_START_MAX_DAYS_AGO + 1)))
            names.append(f"{self.faker.catch_phrase()} {self.faker.year()}"[:255])
            bids.append(round(float(self.rng.uniform(*BID_RANGE)), 2))
            budgets.append(round(float(self.rng.uniform(*BUDGET_RANGE)), 2))
            starts.append(start)
            ends.append(start + timedelta(days=int(self.rng.integers(FLIGHT_DAYS[0], FLIGHT_DAYS[1] + 1))))
        return self._insert_returning(
            "INSERT INTO campaign (name, bid, budget, start_date, end_date, advertiser_id, updated_at, created_at) "
            "SELECT n, b, g, s, e, %s, %s, %s "
            "FROM unnest(%s::text[], %s::numeric[], %s::numeric[], %s::date[], %s::date[]) AS t(n, b, g, s, e) "
            "RETURNING id",
            (advertiser_id, self.now, self.now, names, bids, budgets, starts, ends),
        )

    def _insert_returning(self, sql: str, params: tuple[object, ...]) -> list[int]:
        return sorted(row[0] for row in self.conn.execute(sql, params).fetchall())

    def _insert_impressions(self, campaign_id: int, count: int) -> np.ndarray:
        """Impressions spread uniformly over the last 7 days; returns their times."""
        spread_us = int(IMPRESSION_SPREAD / timedelta(microseconds=1))
        offsets = self.rng.integers(0, spread_us, size=count)
        times = np.datetime64(self.now, "us") - offsets.astype("timedelta64[us]")
        self._copy("impressions", campaign_id, np.sort(times))
        return times

    def _insert_clicks(self, campaign_id: int, impression_times: np.ndarray, ratio: float) -> int:
        """Clicks on round(ratio × n) distinct impressions, each 1–120 s after its impression."""
        count = round(len(impression_times) * ratio)
        if count == 0:
            return 0
        clicked = self.rng.choice(impression_times, size=count, replace=False)
        delays = self.rng.integers(CLICK_DELAY_SECONDS[0], CLICK_DELAY_SECONDS[1] + 1, size=count)
        self._copy("clicks", campaign_id, np.sort(clicked + (delays * 1_000_000).astype("timedelta64[us]")))
        return count

    def _copy(self, table: str, campaign_id: int, times: np.ndarray) -> None:
        """COPY (campaign_id, created_at) rows in CSV, built by Polars: far faster than row-by-row."""
        if len(times) == 0:
            return
        frame = pl.DataFrame({"campaign_id": pl.repeat(campaign_id, len(times), eager=True), "created_at": times})
        buffer = io.BytesIO()
        frame.write_csv(buffer, include_header=False, datetime_format="%Y-%m-%d %H:%M:%S%.6f")
        with self.conn.cursor().copy(f"COPY {table} (campaign_id, created_at) FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getbuffer())


def _check_count(option: str, value: int) -> None:
    if value < 0:
        raise AdpipeError(f"{option} must be zero or more, got {value}")


def _check_ratio(option: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise AdpipeError(f"{option} must be between 0 and 1, got {value}")


@dataclass(frozen=True)
class TableStats:
    table: str
    rows: int
    min_id: int | None
    max_id: int | None
    min_created_at: datetime | None
    max_created_at: datetime | None


def table_stats(conn: psycopg.Connection) -> list[TableStats]:
    """Per source table: rows, id range and created_at range."""
    stats = []
    for table in SOURCE_TABLES:
        row = conn.execute(
            f"SELECT count(*), min(id), max(id), min(created_at), max(created_at) FROM {table}"
        ).fetchone()
        stats.append(TableStats(table, *row))
    return stats


def reset(conn: psycopg.Connection) -> None:
    """Empty all four source tables and restart their ids, in one transaction."""
    with conn.transaction():
        conn.execute(f"TRUNCATE {', '.join(SOURCE_TABLES)} RESTART IDENTITY")
