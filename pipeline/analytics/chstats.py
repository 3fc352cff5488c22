"""`adpipe chstats`: the seed project's three-section KPI printout, kept byte-for-byte in its layout.

The seed printed fixed-width columns with f-strings; users have scripts and eyes trained on it.
Widths are the seed's, widened when a value would not fit so the columns never break, and names
that fill the seed's 20-character column or more are cut to 18 and an ellipsis.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pipeline.analytics.kpi import Filters, compute
from pipeline.config import Settings

NAME_WIDTH = 20


@dataclass(frozen=True)
class Column:
    header: str
    source: str
    width: int
    truncate: bool = False


@dataclass(frozen=True)
class Section:
    title: str
    kpi: str
    columns: tuple[Column, ...]


SECTIONS = (
    Section(
        "=== 📊 ClickHouse Campaign CTR ===",
        "campaign_ctr",
        (
            Column("Campaign ID", "campaign_id", 12),
            Column("Name", "campaign_name", NAME_WIDTH, truncate=True),
            Column("Impressions", "impressions", 12),
            Column("Clicks", "clicks", 8),
            Column("CTR", "ctr", 6),
        ),
    ),
    Section(
        "=== 📅 Daily Impressions and Clicks ===",
        "daily_impressions_clicks",
        (
            Column("Date", "date", 12),
            Column("Impressions", "impressions", 12),
            Column("Clicks", "clicks", 8),
            Column("CTR", "ctr", 6),
        ),
    ),
    Section(
        "=== 📈 CTR per Advertiser ===",
        "advertiser_ctr",
        (
            Column("Advertiser ID", "advertiser_id", 15),
            Column("Name", "advertiser_name", NAME_WIDTH, truncate=True),
            Column("Impressions", "impressions", 12),
            Column("Clicks", "clicks", 8),
            Column("CTR", "ctr", 6),
        ),
    ),
)


def chstats(settings: Settings) -> str:
    """The seed's report over the whole warehouse."""
    return render({section.kpi: compute(settings, section.kpi, Filters()) for section in SECTIONS})


def render(results: dict[str, pl.DataFrame]) -> str:
    """The three sections as text, from the results of their KPIs keyed by KPI name."""
    return "\n\n".join(_render_section(section, results[section.kpi]) for section in SECTIONS) + "\n"


def _render_section(section: Section, frame: pl.DataFrame) -> str:
    cells = [
        [_cell(column, value) for column, value in zip(section.columns, row, strict=True)]
        for row in frame.select([c.source for c in section.columns]).iter_rows()
    ]
    widths = [
        max([column.width, len(column.header) + 1, *(len(row[i]) + 1 for row in cells)])
        for i, column in enumerate(section.columns)
    ]
    lines = [section.title, _line([c.header for c in section.columns], widths), "-" * (sum(widths) + len(widths) - 1)]
    lines.extend(_line(row, widths) for row in cells)
    return "\n".join(lines)


def _line(cells: list[str], widths: list[int]) -> str:
    return " ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _cell(column: Column, value: object) -> str:
    if column.source == "ctr":
        return "n/a" if value is None else f"{value:.2%}"
    text = "" if value is None else str(value)
    if column.truncate and len(text) >= column.width:
        return text[: column.width - 2].rstrip() + "…"
    return text
