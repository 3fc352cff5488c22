"""The seed's data generator: realistic advertisers, campaigns, impressions and clicks, written with COPY.

Every public function validates its input first and writes in one transaction, so bad input
leaves the tables exactly as they were.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import psycopg
from faker import Faker
from psycopg import sql

from pipeline.catalog import SOURCE_TABLES
from pipeline.errors import AdpipeError

IMPRESSION_SPREAD = timedelta(days=7)
CLICK_DELAY_SECONDS = (1, 120)
BID_RANGE = (0.50, 5.00)
BUDGET_RANGE = (50.0, 500.0)
FLIGHT_DAYS = (7, 30)
FLIGHT_START_MAX_DAYS_AGO = 14
CHUNK_ROWS = 250_000
"""Impressions generated, copied or read per step, so memory does not grow with their count."""


@dataclass(frozen=True)
class BatchResult:
    advertisers: int
    campaigns: int
    impressions: int
    clicks: int


EARLIEST_NOW = datetime(1970, 2, 1)
LATEST_NOW = datetime(2149, 5, 1)  # campaigns end up to 30 days later, and ClickHouse's Date ends on 2149-06-06


class Generator:
    """Writes generated rows into the source tables; `seed` makes a run reproducible."""

    def __init__(self, conn: psycopg.Connection, seed: int | None = None, now: datetime | None = None) -> None:
        """`now` (naive UTC) is the clock the data is generated against; with `seed`, the rows are reproducible."""
        if now is not None and not EARLIEST_NOW <= now <= LATEST_NOW:
            # The rows are dated up to 14 days before it and 30 after: they must fit the warehouse's dates.
            raise AdpipeError(f"--now must be between {EARLIEST_NOW:%Y-%m-%d} and {LATEST_NOW:%Y-%m-%d}, got {now}")
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
            clicks = sum(self._insert_impressions(campaign_id, impressions, ctr) for campaign_id in campaign_ids)
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
            self._insert_impressions(campaign_id, count)
            return count

    def clicks(self, campaign_id: int, ratio: float) -> int:
        """Clicks on round(ratio × n) distinct impressions of the n the campaign already has (with a time)."""
        _check_ratio("--ratio", ratio)
        with self.conn.transaction():
            self._require("campaign", campaign_id, "--campaign-id")
            # The impressions are read chunk by chunk, but the clicks are written after the read ends:
            # COPY out and COPY in cannot interleave on one connection. They are 8 bytes per click.
            seen = clicks = 0
            pending = []
            for times in self._impression_times_of(campaign_id):
                wanted = _share(ratio, seen + len(times)) - _share(ratio, seen)
                pending.append(self._click_times(times, wanted))
                seen += len(times)
                clicks += wanted
            for times in pending:
                self._copy("clicks", campaign_id, times)
            return clicks

    def _impression_times_of(self, campaign_id: int) -> Iterator[np.ndarray]:
        """The campaign's impression times in id order (so a seed picks the same clicks), CHUNK_ROWS at a time.

        As microseconds since the epoch: exact, and independent of the session's DateStyle. An impression
        without a time (the schema allows it) cannot be followed by a click, so it is skipped.
        """
        query = sql.SQL(
            "COPY (SELECT (extract(epoch FROM created_at) * 1000000)::bigint FROM impressions "
            "WHERE campaign_id = {} AND created_at IS NOT NULL ORDER BY id) TO STDOUT"
        ).format(campaign_id)
        buffer = bytearray()
        with self.conn.cursor().copy(query) as copy:
            # Postgres sends one message per row; parse in chunks rather than row by row.
            for rows, block in enumerate(copy, start=1):
                buffer += block
                if rows % CHUNK_ROWS == 0:
                    yield _parse_times(buffer)
                    buffer.clear()
        if buffer:
            yield _parse_times(buffer)

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
            # The flight's year, not Faker's year(): that one draws from a range ending at the wall clock.
            names.append(f"{self.faker.catch_phrase()} {start.year}"[:255])
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

    def _insert_returning(self, query: str, params: tuple[object, ...]) -> list[int]:
        return sorted(row[0] for row in self.conn.execute(query, params).fetchall())

    def _insert_impressions(self, campaign_id: int, count: int, ctr: float = 0.0) -> int:
        """Impressions spread uniformly over the last 7 days, clicked at `ctr`; returns the clicks written.

        Written CHUNK_ROWS at a time (each chunk time-ordered), so memory does not grow with `count`.
        """
        spread_us = int(IMPRESSION_SPREAD / timedelta(microseconds=1))
        clicks = 0
        for start in range(0, count, CHUNK_ROWS):
            size = min(CHUNK_ROWS, count - start)
            offsets = self.rng.integers(0, spread_us, size=size)
            times = np.sort(np.datetime64(self.now, "us") - offsets.astype("timedelta64[us]"))
            self._copy("impressions", campaign_id, times)
            # Shares of the running total, so the chunks add up to exactly round(ctr × count).
            wanted = _share(ctr, start + size) - _share(ctr, start)
            self._copy("clicks", campaign_id, self._click_times(times, wanted))
            clicks += wanted
        return clicks

    def _click_times(self, impression_times: np.ndarray, count: int) -> np.ndarray:
        """Times of clicks on `count` distinct impressions, each 1–120 s after its impression, sorted."""
        clicked = self.rng.choice(impression_times, size=count, replace=False)
        delays = self.rng.integers(CLICK_DELAY_SECONDS[0], CLICK_DELAY_SECONDS[1] + 1, size=count)
        return np.sort(clicked + (delays * 1_000_000).astype("timedelta64[us]"))

    def _copy(self, table: str, campaign_id: int, times: np.ndarray) -> None:
        """COPY (campaign_id, created_at) rows in Postgres' binary format, built by numpy in one go.

        Binary spares the server parsing timestamp text: measured ~1 s less per million rows than CSV.
        """
        if len(times) == 0:
            return
        rows = np.empty(len(times), dtype=_BINARY_ROW)
        rows["fields"], rows["id_size"], rows["time_size"] = 2, 4, 8
        rows["campaign_id"] = campaign_id
        rows["created_at"] = (times - _PG_EPOCH).astype(np.int64)
        with self.conn.cursor().copy(f"COPY {table} (campaign_id, created_at) FROM STDIN (FORMAT binary)") as copy:
            copy.write(_BINARY_HEADER)
            copy.write(rows.data)
            copy.write(_BINARY_TRAILER)


# COPY binary: a signature, flags and header-extension length, then per row the field count and each
# field's byte length and big-endian value (timestamp: microseconds since 2000-01-01), then -1.
_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_BINARY_TRAILER = b"\xff\xff"
_BINARY_ROW = np.dtype(
    [("fields", ">i2"), ("id_size", ">i4"), ("campaign_id", ">i4"), ("time_size", ">i4"), ("created_at", ">i8")]
)
_PG_EPOCH = np.datetime64("2000-01-01", "us")


def _share(ratio: float, count: int) -> int:
    """round(ratio × count), halves up: monotone, so differences of running shares are never negative."""
    return math.floor(ratio * count + 0.5)


def _parse_times(text: bytearray) -> np.ndarray:
    """Microseconds since the epoch, one per line, as datetime64[us]."""
    micros = pl.read_csv(bytes(text), has_header=False, schema={"us": pl.Int64})["us"].to_numpy()
    return micros.astype("datetime64[us]")


def _check_count(option: str, value: int) -> None:
    if value < 0:
        raise AdpipeError(f"{option} must be zero or more, got {value}")


def _check_ratio(option: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise AdpipeError(f"{option} must be between 0 and 1, got {value}")


def reset(conn: psycopg.Connection) -> None:
    """Empty all four source tables and restart their ids, in one transaction."""
    with conn.transaction():
        conn.execute(f"TRUNCATE {', '.join(SOURCE_TABLES)} RESTART IDENTITY")
