"""Plotly figures of the KPIs and the referral reports, each from the Polars frame the library returns.

Every function takes the frame as `pipeline.analytics.kpi.compute` (or `pipeline.referral.publish.query_reports`)
returns it and gives a `plotly.graph_objects.Figure`; an empty frame gives an empty figure that says
"no data" rather than an error, so a report or a notebook renders before the first sync or load.
CTRs are fractions in the frames and shown as percentages on the axes.
"""

from __future__ import annotations

import html
from datetime import timedelta
from typing import Any

import plotly.graph_objects as go
import polars as pl

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
"""ctr_heatmap's weekday 1 … 7 (ISO: 1 = Monday)."""
HOUR = timedelta(hours=1)
DAY_MS = 86_400_000
"""A day in milliseconds, the unit of plotly's date axes."""

_LAYOUT: dict[str, Any] = {"template": "plotly_white", "margin": {"l": 60, "r": 30, "t": 60, "b": 60}}


def campaign_ctr_chart(frame: pl.DataFrame) -> go.Figure:
    """CTR per campaign with its Wilson 95% interval as error bars, rank 1 on top (KPI `ctr_ranking`)."""
    title = "CTR by campaign with its Wilson 95% interval, ranked by the interval's lower bound"
    if frame.is_empty():
        return _no_data(title)
    ctr = frame["ctr"].cast(pl.Float64)
    figure = go.Figure(
        go.Bar(
            y=_campaign_labels(frame),
            x=ctr.to_list(),
            orientation="h",
            error_x={
                "type": "data",
                "symmetric": False,
                # A CTR above 1 (more clicks than impressions) is bounded as 1: its upper bar is empty, not negative.
                "array": (frame["wilson_high"].cast(pl.Float64) - ctr).clip(lower_bound=0).to_list(),
                "arrayminus": (ctr - frame["wilson_low"].cast(pl.Float64)).to_list(),
            },
            customdata=frame.select("impressions", "clicks", "wilson_low", "wilson_high").rows(),
            hovertemplate=(
                "%{y}<br>CTR %{x:.2%} (95%: %{customdata[2]:.2%} – %{customdata[3]:.2%})"
                "<br>%{customdata[1]:,} clicks / %{customdata[0]:,} impressions<extra></extra>"
            ),
            name="CTR",
        )
    )
    figure.update_layout(
        title=title,
        height=_rows_height(frame.height, 24),
        xaxis={"title": "CTR", "tickformat": ".1%", "rangemode": "tozero"},
        yaxis={"autorange": "reversed", "automargin": True},
        **_LAYOUT,
    )
    return figure


def daily_volume_chart(frame: pl.DataFrame) -> go.Figure:
    """Impressions (bars, left axis) and clicks (line, right axis) per UTC day (KPI `daily_impressions_clicks`)."""
    title = "Impressions and clicks per UTC day"
    if frame.is_empty():
        return _no_data(title)
    days = frame["date"].to_list()
    figure = go.Figure(
        [
            go.Bar(x=days, y=frame["impressions"].to_list(), name="impressions", marker_color="#9ecae1"),
            # Clicks are a few percent of impressions: on the same axis their line would lie flat on zero.
            go.Scatter(
                x=days,
                y=frame["clicks"].to_list(),
                name="clicks",
                mode="lines+markers",
                yaxis="y2",
                line_color="#e6550d",
            ),
        ]
    )
    figure.update_layout(
        title=title,
        # A short range gets a tick per day; plotly would otherwise tick at 06:00, 12:00… of a day.
        xaxis={"title": "day (UTC)", "dtick": DAY_MS, "tickformat": "%b %d"}
        if (frame["date"].max() - frame["date"].min()).days <= 31
        else {"title": "day (UTC)"},
        yaxis={"title": "impressions", "rangemode": "tozero"},
        # Ticks of its own: plotly would otherwise line them up with the impressions' (179.9, 224.9, …).
        yaxis2={
            "title": "clicks",
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
            "showgrid": False,
            "tickmode": "auto",
        },
        legend={"orientation": "h", "y": -0.2},
        **_LAYOUT,
    )
    return figure


def advertiser_ctr_chart(frame: pl.DataFrame) -> go.Figure:
    """CTR per advertiser (KPI `advertiser_ctr`); an advertiser without impressions has no bar."""
    title = "CTR by advertiser"
    if frame.is_empty():
        return _no_data(title)
    labels = [_label(name, id_) for id_, name in frame.select("advertiser_id", "advertiser_name").iter_rows()]
    figure = go.Figure(
        go.Bar(
            x=labels,
            y=frame["ctr"].cast(pl.Float64).to_list(),
            customdata=frame.select("impressions", "clicks").rows(),
            hovertemplate="%{x}<br>CTR %{y:.2%}<br>%{customdata[1]:,} clicks / %{customdata[0]:,} impressions"
            "<extra></extra>",
            name="CTR",
            marker_color="#31a354",
        )
    )
    figure.update_layout(title=title, xaxis_title="advertiser", yaxis_title="CTR", yaxis_tickformat=".1%", **_LAYOUT)
    return figure


def budget_pacing_chart(frame: pl.DataFrame) -> go.Figure:
    """Spend so far, projected spend at the end of the flight, and budget per campaign (KPI `budget_pacing`)."""
    title = "Budget pacing: spend so far, projected spend at the end of the flight, budget"
    if frame.is_empty():
        return _no_data(title)
    labels = _campaign_labels(frame)
    money = frame.select(pl.col("spend", "projected_spend", "budget").cast(pl.Float64))
    figure = go.Figure(
        [
            go.Bar(y=labels, x=money["spend"].to_list(), orientation="h", name="spend so far", marker_color="#3182bd"),
            go.Bar(
                y=labels,
                x=money["projected_spend"].to_list(),
                orientation="h",
                name="projected at flight end",
                marker_color="#9ecae1",
            ),
            go.Scatter(
                y=labels,
                x=money["budget"].to_list(),
                name="budget",
                mode="markers",
                marker={
                    "symbol": "line-ns-open",
                    "size": 22,
                    "color": "#de2d26",
                    "line": {"width": 3, "color": "#de2d26"},
                },
            ),
        ]
    )
    figure.update_layout(
        title=title,
        height=_rows_height(frame.height, 30),
        barmode="group",
        xaxis={"title": "money (CPC: clicks × bid)", "rangemode": "tozero"},
        yaxis={"autorange": "reversed", "automargin": True},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0},
        **_LAYOUT,
    )
    return figure


def ctr_heatmap_chart(frame: pl.DataFrame) -> go.Figure:
    """CTR by UTC hour (columns) and weekday (rows) (KPI `ctr_heatmap`); buckets without impressions are blank."""
    title = "CTR by hour and weekday (UTC)"
    if frame.is_empty():
        return _no_data(title)
    grid: list[list[float | None]] = [[None] * 24 for _ in WEEKDAYS]
    for weekday, hour, ctr in frame.select("weekday", "hour", pl.col("ctr").cast(pl.Float64)).iter_rows():
        grid[weekday - 1][hour] = ctr
    figure = go.Figure(
        go.Heatmap(
            z=grid,
            x=list(range(24)),
            y=list(WEEKDAYS),
            colorscale="Viridis",  # low CTRs stay visible, unlike on a scale that starts at white
            colorbar={"title": "CTR", "tickformat": ".1%"},
            hovertemplate="%{y} %{x}:00<br>CTR %{z:.2%}<extra></extra>",
            hoverongaps=False,
        )
    )
    figure.update_layout(
        title=title, xaxis={"title": "hour (UTC)", "dtick": 1}, yaxis={"autorange": "reversed"}, **_LAYOUT
    )
    return figure


def referral_ctr_chart(frame: pl.DataFrame) -> go.Figure:
    """Referral CTR (related clicks / page loads) per customer (rows) and UTC hour (columns).

    From `referral.click_through_rate` (`pipeline.referral.publish.query_reports`). A heatmap rather than a
    line per customer: it stays readable with a hundred customers. Hours are contiguous from the first to
    the last; an hour without page loads is blank.
    """
    title = "Referral CTR per customer and hour (UTC)"
    if frame.is_empty():
        return _no_data(title)
    first = frame["hour"].min()
    hours = (frame["hour"].max() - first) // HOUR + 1
    customers = frame["customer_id"].unique().sort().to_list()
    row_of = {customer: row for row, customer in enumerate(customers)}
    grid: list[list[float | None]] = [[None] * hours for _ in customers]
    for customer, hour, ctr in frame.select("customer_id", "hour", pl.col("ctr").cast(pl.Float64)).iter_rows():
        grid[row_of[customer]][(hour - first) // HOUR] = ctr
    figure = go.Figure(
        go.Heatmap(
            z=grid,
            # Each column spans its hour: centred half an hour after it starts (also right for a single hour,
            # where plotly could not infer a column's width from its neighbours).
            x0=first + HOUR / 2,
            dx=HOUR.total_seconds() * 1000,
            y=[f"customer {customer}" for customer in customers],
            colorscale="Viridis",
            colorbar={"title": "CTR", "tickformat": ".0%"},
            hovertemplate="%{y}<br>%{x|%Y-%m-%d %H:00} UTC<br>CTR %{z:.2%}<extra></extra>",
            hoverongaps=False,
        )
    )
    figure.update_layout(
        title=title,
        height=_rows_height(len(customers), 22),
        xaxis={"title": "hour (UTC)", "type": "date"},
        yaxis={"type": "category", "automargin": True, "autorange": "reversed"},
        **_LAYOUT,
    )
    return figure


def _campaign_labels(frame: pl.DataFrame) -> list[str]:
    """Names with the id: campaign names need not be unique, and plotly merges equal category labels."""
    return [_label(name, id_) for id_, name in frame.select("campaign_id", "campaign_name").iter_rows()]


def _label(name: str, id_: int) -> str:
    """A name as plotly shows it literally: plotly reads a few HTML tags and entities in text, so `<b>` is escaped."""
    return f"{html.escape(name)} (#{id_})"


def _rows_height(rows: int, per_row: int) -> int:
    """Pixels for a chart with one band per row, so that many campaigns stay legible."""
    return max(450, 160 + rows * per_row)


def _no_data(title: str) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(
        title=title,
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[
            {
                "text": "no data",
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "showarrow": False,
                "font_size": 20,
            }
        ],
        **_LAYOUT,
    )
    return figure
