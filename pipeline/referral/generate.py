"""`adpipe events generate`: a realistic referral event file, in time order, with a controlled share of defects.

Users load customers' referral pages; some click "Recommend" seconds to minutes later, mostly logged with
the page load's event_id, sometimes with an id of their own (related then only through the window).
A few FAQ clicks. Then defects, each on its own share of lines (DEFECT_SHARES): repeated lines, null
users, invalid event types, unparseable times, truncated JSON, a missing field, and event ids reused under
another customer. Built with numpy and Polars a block at a time, not a line at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
from faker import Faker

from pipeline.errors import AdpipeError
from pipeline.referral.events import CLICK, FAQ_CLICK, PAGE_LOAD

START = datetime(2022, 1, 1)
MEAN_GAP_SECONDS = 0.25
"""~345,000 events a day: 10M events span about a month."""
CLICK_SHARE = 0.3
"""Page loads followed by a click."""
OWN_ID_CLICK_SHARE = 0.2
"""Clicks logged with a new event_id instead of the page load's."""
CLICK_DELAY_SECONDS = (2, 900)
FAQ_SHARE = 0.05
ISO_SHARE = 0.1
"""Lines whose fired_at is ISO 8601 instead of `MM/DD/YYYY, HH:MM:SS`."""
DEFECT_SHARES = {
    "duplicate": 0.01,
    "null_user": 0.002,
    "invalid_type": 0.002,
    "bad_time": 0.002,
    "bad_json": 0.002,
    "missing_field": 0.001,
    "other_customer": 0.001,
}
PII_POOL = 50_000
"""Distinct Faker emails and IPs generated; users beyond it share them (generating one per user is slow)."""
BLOCK_ROWS = 1_000_000


@dataclass(frozen=True)
class Generated:
    lines: int
    defects: int


def generate_file(path: Path, events: int, customers: int, users: int, seed: int | None = None) -> Generated:
    """Write about `events` lines (exactly, give or take rounding of the shares) to `path`."""
    if events < 0:
        raise AdpipeError(f"--events must be 0 or more, got {events}")
    for option, value in (("--customers", customers), ("--users", users)):
        if value < 1:
            raise AdpipeError(f"{option} must be 1 or more, got {value}")
    if path.is_dir():
        raise AdpipeError(f"{path} is a directory")
    rng = np.random.default_rng(seed)
    faker = Faker()
    faker.seed_instance(seed)
    frame = _events(rng, round(events / (1 + DEFECT_SHARES["duplicate"])), customers, users)
    frame, defects = _defects(rng, frame, customers)
    pool = min(users, PII_POOL)
    emails = pl.Series([faker.email() for _ in range(pool)])
    ips = pl.Series([faker.ipv4_public() for _ in range(pool)])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for offset in range(0, len(frame), BLOCK_ROWS):
            block = frame.slice(offset, BLOCK_ROWS)
            _lines(block, emails, ips).write_csv(handle, include_header=False, quote_style="never")
    return Generated(len(frame), defects)


def _events(rng: np.random.Generator, n: int, customers: int, users: int) -> pl.DataFrame:
    """Valid events in time order: page loads, their clicks, FAQ clicks."""
    faqs = round(n * FAQ_SHARE)
    loads = round((n - faqs) / (1 + CLICK_SHARE))
    clicks = min(n - faqs - loads, loads)
    faqs = n - loads - clicks
    span = n * MEAN_GAP_SECONDS
    load_at = np.sort(rng.uniform(0, span, loads)).astype(np.int64)
    load_customer = rng.integers(1, customers + 1, loads)
    load_user = rng.integers(1, users + 1, loads)
    load_id = rng.integers(1, 2**62, loads)
    clicked = rng.choice(loads, clicks, replace=False) if clicks else np.zeros(0, np.int64)
    click_id = np.where(rng.random(clicks) < OWN_ID_CLICK_SHARE, rng.integers(1, 2**62, clicks), load_id[clicked])
    parts = [
        (load_at, load_customer, load_user, load_id, np.zeros(loads, np.int8)),
        (
            load_at[clicked] + rng.integers(*CLICK_DELAY_SECONDS, clicks, endpoint=True),
            load_customer[clicked],
            load_user[clicked],
            click_id,
            np.ones(clicks, np.int8),
        ),
        (
            rng.uniform(0, span, faqs).astype(np.int64),
            rng.integers(1, customers + 1, faqs),
            rng.integers(1, users + 1, faqs),
            rng.integers(1, 2**62, faqs),
            np.full(faqs, 2, np.int8),
        ),
    ]
    seconds, customer, user, ids, kind = (np.concatenate(column) for column in zip(*parts, strict=True))
    order = np.argsort(seconds, kind="stable")
    return pl.DataFrame(
        {
            "seconds": seconds[order],
            "customer_id": customer[order],
            "user_id": user[order],
            "event_id": ids[order],
            "event_type": pl.Series(kind[order]).replace_strict([0, 1, 2], [PAGE_LOAD, CLICK, FAQ_CLICK]),
        }
    )


def _defects(rng: np.random.Generator, frame: pl.DataFrame, customers: int) -> tuple[pl.DataFrame, int]:
    """Mark each line with at most one defect, then insert repeated lines right after their originals."""
    n = len(frame)
    labels = [name for name in DEFECT_SHARES if name != "duplicate"]
    draw = rng.random(n)
    defect = np.full(n, "", dtype=object)
    low = 0.0
    for name in labels:
        high = low + DEFECT_SHARES[name]
        defect[(draw >= low) & (draw < high)] = name
        low = high
    frame = frame.with_columns(
        defect=pl.Series(defect, dtype=pl.String),
        other_customer=pl.Series(rng.integers(1, customers + 1, n)),
        iso=pl.Series(rng.random(n) < ISO_SHARE),
    )
    repeats = rng.choice(n, round(n * DEFECT_SHARES["duplicate"]), replace=False) if n else np.zeros(0, np.int64)
    index = np.sort(np.concatenate([np.arange(n), repeats]), kind="stable")
    return frame[index], int((defect != "").sum()) + len(repeats)


def _lines(block: pl.DataFrame, emails: pl.Series, ips: pl.Series) -> pl.DataFrame:
    defect = pl.col("defect")
    fired_at = pl.lit(START) + pl.duration(seconds=pl.col("seconds"))
    text_time = (
        pl.when(defect == "bad_time")
        .then(pl.lit("13/45/2022, 25:61:00"))
        .when(pl.col("iso"))
        .then(fired_at.dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
        .otherwise(fired_at.dt.strftime("%m/%d/%Y, %H:%M:%S"))
    )
    customer = pl.when(defect == "other_customer").then(pl.col("other_customer")).otherwise(pl.col("customer_id"))
    user = pl.when(defect == "null_user").then(pl.lit("null")).otherwise(pl.col("user_id").cast(pl.String))
    pii = pl.col("user_id") % len(emails)
    line = pl.concat_str(
        pl.lit('{"event_id": "'),
        pl.col("event_id").cast(pl.String),
        pl.lit('"'),
        pl.when(defect == "missing_field")
        .then(pl.lit(""))
        .otherwise(pl.concat_str(pl.lit(', "customer_id": '), customer.cast(pl.String))),
        pl.lit(', "user_id": '),
        user,
        pl.lit(', "fired_at": "'),
        text_time,
        pl.lit('", "event_type": "'),
        pl.when(defect == "invalid_type").then(pl.lit("EMPTY_VALUE")).otherwise(pl.col("event_type")),
        pl.lit('", "ip": "'),
        pl.lit(ips).gather(pii),
        pl.lit('", "email": "'),
        pl.lit(emails).gather(pii),
        pl.lit('"}'),
    )
    line = pl.when(defect == "bad_json").then(line.str.slice(0, line.str.len_bytes() // 2)).otherwise(line)
    return block.select(line=line)
