"""What a referral event is once cleaned, and the time rules every part of the feature shares."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

PAGE_LOAD = "ReferralPageLoad"
CLICK = "ReferralRecommendClick"
FAQ_CLICK = "FaqClick"
EVENT_TYPES = (PAGE_LOAD, CLICK, FAQ_CLICK)

EVENT_SCHEMA = pl.Schema(
    {
        "event_id": pl.String,
        "customer_id": pl.Int64,
        "user_id": pl.Int64,
        "fired_at": pl.Datetime("us"),  # naive, holds UTC (like every timestamp in Postgres here)
        "event_type": pl.String,
    }
)
"""The cleaned event as staged, sent to ClickHouse and used by the reports. `email` and `ip` are dropped."""

KEY = ["event_id", "event_type"]
"""Two lines with the same key are one event logged twice."""

ORDER = ["fired_at", "customer_id", "user_id"]
"""Which of two copies of an event is kept: the earliest, then the smaller customer and user ids, so the
choice does not depend on the order files are loaded in."""

HORIZON = timedelta(hours=1)
"""How far apart two records of one interaction can be: a page load and the click it led to (linked by
event_id), or an event logged twice. It bounds what stream mode remembers and what a recomputation reads."""

LATE_TOLERANCE = timedelta(minutes=10)
"""Stream mode: an event more than this behind the newest event read so far is quarantined as late."""

DEFAULT_WINDOW_SECONDS = 300
MAX_WINDOW_SECONDS = int(HORIZON.total_seconds())


def key_hash() -> pl.Expr:
    """A 64-bit hash of KEY: equal keys hash equal, so a hash seen once rules a key out; a key is only ruled in by
    comparing the keys themselves."""
    return pl.struct(KEY).hash()


def keep_first(frame: pl.DataFrame, order: list[str]) -> pl.DataFrame:
    """One row per KEY, the first by `order`, in time order.

    Only the rows whose key repeats (about 1% of a file) are sorted to pick one; hashing finds them in one pass
    and every other row keeps its place, so a frame already in time order is not sorted again. The rows are
    found by a 64-bit hash of the key (~40% less CPU than comparing the keys): a collision only adds a row whose
    key does not repeat to those sorted, where `unique` compares the keys themselves and keeps it.
    """
    repeated = frame.select(key_hash().is_duplicated()).to_series()
    if repeated.any():
        picked = (
            frame.with_row_index("_row")
            .filter(repeated)
            .sort(order)
            .unique(KEY, keep="first", maintain_order=True)
            .get_column("_row")
        )
        frame = frame.filter((~repeated).scatter(picked, True))
    return frame if frame.get_column("fired_at").is_sorted() else frame.sort("fired_at", maintain_order=True)
