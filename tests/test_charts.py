"""The chart functions on hand-built frames shaped like the KPI results: traces, values, and empty frames."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import polars as pl
import pytest

from pipeline.analytics import charts


def test_campaign_ctr_chart_error_bars_are_the_wilson_bounds() -> None:
    frame = pl.DataFrame(
        {
            "rank": [1, 2],
            "campaign_id": [7, 3],
            "campaign_name": ["Spring", "<b>Spring"],
            "impressions": [1000, 200],
            "clicks": [100, 10],
            "ctr": [0.1, 0.05],
            "wilson_low": [0.083, 0.0275],
            "wilson_high": [0.12, 0.09],
        }
    )
    (bar,) = charts.campaign_ctr_chart(frame).data
    # Two campaigns of the same name stay two bars; plotly would read `<b>` as markup, so it is escaped.
    assert list(bar.y) == ["Spring (#7)", "&lt;b&gt;Spring (#3)"]
    assert list(bar.x) == [0.1, 0.05]
    assert list(bar.error_x.array) == pytest.approx([0.02, 0.04])
    assert list(bar.error_x.arrayminus) == pytest.approx([0.017, 0.0225])


def test_a_ctr_above_1_has_no_upper_error_bar() -> None:
    """More clicks than impressions: ctr_ranking bounds the CTR as 1, so the upper bound is below the bar's end."""
    frame = pl.DataFrame(
        {
            "rank": [1],
            "campaign_id": [1],
            "campaign_name": ["over"],
            "impressions": [100],
            "clicks": [101],
            "ctr": [1.01],
            "wilson_low": [0.963],
            "wilson_high": [1.0],
        }
    )
    (bar,) = charts.campaign_ctr_chart(frame).data
    assert list(bar.error_x.array) == [0.0]
    assert list(bar.error_x.arrayminus) == pytest.approx([0.047])


def test_daily_volume_chart_puts_clicks_on_a_second_axis() -> None:
    frame = pl.DataFrame(
        {"date": [date(2026, 1, 1), date(2026, 1, 2)], "impressions": [10, 20], "clicks": [1, 3], "ctr": [0.1, 0.15]}
    )
    impressions, clicks = charts.daily_volume_chart(frame).data
    assert (list(impressions.y), list(clicks.y)) == ([10, 20], [1, 3])
    assert clicks.yaxis == "y2"


def test_budget_pacing_chart_reads_decimals_and_missing_projections() -> None:
    frame = pl.DataFrame(
        {
            "campaign_id": [1, 2],
            "campaign_name": ["a", "b"],
            "spend": [Decimal("12.50"), Decimal("0.00")],
            "projected_spend": [25.0, None],
            "budget": [Decimal("100.00"), Decimal("50.00")],
        },
        schema_overrides={"spend": pl.Decimal(18, 2), "budget": pl.Decimal(10, 2)},
    )
    spend, projected, budget = charts.budget_pacing_chart(frame).data
    assert (list(spend.x), list(projected.x), list(budget.x)) == ([12.5, 0.0], [25.0, None], [100.0, 50.0])


def test_ctr_heatmap_chart_fills_a_week_of_hours() -> None:
    frame = pl.DataFrame(
        {"weekday": [1, 7], "hour": [0, 23], "impressions": [4, 5], "clicks": [1, 0], "ctr": [0.25, 0]}
    )
    (heatmap,) = charts.ctr_heatmap_chart(frame).data
    z = [list(row) for row in heatmap.z]
    assert len(z) == 7 and all(len(row) == 24 for row in z)
    assert z[0][0] == 0.25 and z[6][23] == 0.0
    assert sum(value is not None for row in z for value in row) == 2


def test_referral_ctr_chart_has_a_column_per_hour_and_customers_in_numeric_order() -> None:
    hours = [datetime(2022, 1, 5, 10), datetime(2022, 1, 5, 11), datetime(2022, 1, 5, 13)]
    frame = pl.DataFrame(
        {"customer_id": [10, 2, 2], "hour": [hours[1], hours[0], hours[2]], "ctr": [0.5, None, 1.0]},
        schema_overrides={"ctr": pl.Float64},
    )
    (heatmap,) = charts.referral_ctr_chart(frame).data
    assert list(heatmap.y) == ["customer 2", "customer 10"]
    # 10:00 to 13:00: four hours, 12:00 blank for everyone; each column centred on its hour's middle.
    assert [list(row) for row in heatmap.z] == [[None, None, None, 1.0], [None, 0.5, None, None]]
    assert heatmap.x0 == datetime(2022, 1, 5, 10, 30) and heatmap.dx == 3_600_000


@pytest.mark.parametrize(
    "chart",
    [
        charts.campaign_ctr_chart,
        charts.daily_volume_chart,
        charts.advertiser_ctr_chart,
        charts.budget_pacing_chart,
        charts.ctr_heatmap_chart,
        charts.referral_ctr_chart,
    ],
)
def test_an_empty_frame_gives_a_no_data_figure(chart) -> None:
    figure = chart(pl.DataFrame())
    assert len(figure.data) == 0
    assert [annotation.text for annotation in figure.layout.annotations] == ["no data"]
