"""The hourly referral reports, computed with Polars from cleaned, deduplicated events.

One frame, HOURLY_SCHEMA, holds every report for a (customer, UTC hour); `publish` splits it into the
four Postgres tables. A click is *related* when the same customer and user had a page load with the same
event_id (at most HORIZON before the click), or any page load at most `window` seconds before it
(inclusive). It counts in the click's hour; ctr = related clicks / page loads of that hour.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

from pipeline.referral.events import CLICK, HORIZON, PAGE_LOAD

HOURLY_SCHEMA = pl.Schema(
    {
        "customer_id": pl.Int64,
        "hour": pl.Datetime("us"),
        "page_loads": pl.Int64,
        "clicks": pl.Int64,
        "unique_user_clicks": pl.Int64,
        "related_clicks": pl.Int64,
    }
)
HOUR_KEY = ["customer_id", "hour"]
_USER = ["customer_id", "user_id"]
_ID_LIMIT = 1 << 31


def hour_of(column: str = "fired_at") -> pl.Expr:
    return pl.col(column).dt.truncate("1h").alias("hour")


def hour_counts(events: pl.DataFrame) -> pl.DataFrame:
    """Page loads and clicks per (customer, hour) that has events."""
    return events.group_by("customer_id", hour_of()).agg(
        page_loads=(pl.col("event_type") == PAGE_LOAD).sum(), clicks=(pl.col("event_type") == CLICK).sum()
    )


def touched_hours(counts: pl.DataFrame) -> pl.DataFrame:
    """The (customer, hour) keys whose reports the events counted in `counts` (`hour_counts`) can change: their
    own, and the next hour after a page load, where a click may relate to it (no further: HORIZON, the furthest a
    related click can be from its page load, is at most one hour)."""
    spill = counts.filter(pl.col("page_loads") > 0).select("customer_id", pl.col("hour") + timedelta(hours=1))
    return pl.concat([counts.select(HOUR_KEY), spill]).unique()


def hourly_reports(events: pl.DataFrame, window: timedelta) -> pl.DataFrame:
    """Every report for each (customer, hour) that has a page load or a click among `events`.

    `events` must be deduplicated. For exact related clicks it must also hold the page loads up to
    HORIZON before its first click (a recomputation reads them; the caller keeps only the hours it owns).
    """
    loads = events.filter(pl.col("event_type") == PAGE_LOAD)
    clicks = events.filter(pl.col("event_type") == CLICK)
    load_counts = loads.group_by("customer_id", hour_of()).agg(page_loads=pl.len())
    click_counts = (
        clicks.with_columns(related=related_flags(clicks, loads, window))
        .group_by("customer_id", hour_of())
        .agg(
            clicks=pl.len(),
            unique_user_clicks=pl.col("user_id").n_unique(),
            related_clicks=pl.col("related").sum(),
        )
    )
    return finish(load_counts.join(click_counts, on=HOUR_KEY, how="full", coalesce=True))


def finish(frame: pl.DataFrame) -> pl.DataFrame:
    """Zeros for missing counts, HOURLY_SCHEMA types, sorted by customer and hour."""
    return frame.select(HOURLY_SCHEMA.names()).cast(dict(HOURLY_SCHEMA)).fill_null(0).sort(HOUR_KEY)


def related_flags(clicks: pl.DataFrame, loads: pl.DataFrame, window: timedelta) -> pl.Series:
    """For each click (in its order), whether it is related to a page load in `loads`.

    Two bounded joins rather than one per (customer, user) pair, which would explode for busy users:
    an as-of join finds the user's latest page load at or before the click (the window rule), and an
    equi-join on event_id finds the page load that carries the click's own id (the linking rule).
    """
    if clicks.is_empty():
        return pl.Series("related", [], pl.Boolean)
    user = _user_columns(clicks, loads)
    names = [column.meta.output_name() for column in user]
    probe = clicks.select(*user, "event_id", "fired_at").with_row_index("click")
    page_loads = loads.select(*user, "event_id", pl.col("fired_at").alias("load_at"))
    in_window = (
        probe.sort("fired_at")
        .join_asof(
            page_loads.drop("event_id").sort("load_at"),
            left_on="fired_at",
            right_on="load_at",
            by=names,
            strategy="backward",
            check_sortedness=False,  # sorted by time above; Polars cannot check it per `by` group
        )
        .filter((pl.col("fired_at") - pl.col("load_at")) <= window)
    )
    # Joined on event_id alone, then the same user: one string key hashes faster than several columns.
    linked = probe.join(page_loads, on="event_id", how="inner", suffix="_load").filter(
        pl.all_horizontal(pl.col(name) == pl.col(f"{name}_load") for name in names)
        & (pl.col("load_at") <= pl.col("fired_at"))
        & (pl.col("load_at") >= pl.col("fired_at") - HORIZON)
    )
    # Set the flags by click position: cheaper than joining both results back onto the clicks and re-sorting.
    related = np.zeros(len(clicks), dtype=bool)
    related[in_window.get_column("click").to_numpy()] = True
    related[linked.get_column("click").to_numpy()] = True
    return pl.Series("related", related)


def _user_columns(*frames: pl.DataFrame) -> list[pl.Expr]:
    """What identifies a user (customer and user id) in `related_flags`' joins: both ids packed into one Int64
    when every id of `frames` is in [0, 2^31), which Polars' as-of join matches ~2x faster than two columns
    (7.5 → 3.3 CPU-ms for a chunk's clicks); otherwise the two columns."""
    bounds = [
        frame.select(low=pl.min_horizontal(pl.col(_USER).min()), high=pl.max_horizontal(pl.col(_USER).max())).row(0)
        for frame in frames
    ]
    if all(low is not None and low >= 0 and high < _ID_LIMIT for low, high in bounds):
        return [(pl.col("customer_id") * (2 * _ID_LIMIT) + pl.col("user_id")).alias("user")]
    return [pl.col(column) for column in _USER]
