"""The KPI library: `kpi_sql/<name>.sql` for ClickHouse, `kpi_sql/<name>.duckdb.sql` beside it for DuckDB.

Each file opens with a comment that defines the KPI; its first line is `-- <name> — <summary>`.
Filters are bound as query parameters by the engines' clients, never formatted into the SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, Any

from pipeline.config import Settings
from pipeline.errors import AdpipeError, MissingDatabaseError
from pipeline.sqlfiles import sql_dir, sql_files

if TYPE_CHECKING:  # imported where a KPI runs: `kpi list` and `--help` start without them
    import polars as pl
    from clickhouse_connect.driver.client import Client

SEED_REPORT = ("campaign_ctr", "daily_impressions_clicks", "advertiser_ctr")
"""The seed's three KPIs, in the order `chstats` prints them."""


@dataclass(frozen=True)
class Filters:
    from_date: date | None = None
    to_date: date | None = None
    advertiser_id: int | None = None
    campaign_id: int | None = None
    min_impressions: int | None = None
    """For ctr_ranking: campaigns with fewer impressions are not ranked (the SQL's default is 100)."""

    def __post_init__(self) -> None:
        if self.from_date and self.to_date and self.from_date > self.to_date:
            raise AdpipeError(f"--from {self.from_date} is after --to {self.to_date}")

    def values(self) -> dict[str, Any]:
        return {
            "from_date": self.from_date,
            "to_date": self.to_date,
            "advertiser_id": self.advertiser_id,
            "campaign_id": self.campaign_id,
            "min_impressions": self.min_impressions,
        }


@dataclass(frozen=True)
class Kpi:
    name: str
    clickhouse_path: Traversable
    duckdb_path: Traversable

    @cached_property
    def summary(self) -> str:
        first = self.clickhouse_path.read_text().splitlines()[0]
        text = first.split("—", 1)[1].strip() if "—" in first else first.lstrip("- ")
        return text[:1].upper() + text[1:]

    def clickhouse_sql(self) -> str:
        return self.clickhouse_path.read_text()

    def duckdb_sql(self) -> str:
        return self.duckdb_path.read_text()


def list_kpis() -> list[Kpi]:
    return [
        Kpi(name, file, sql_dir("kpi_sql") / f"{name}.duckdb.sql")
        for file in sql_files("kpi_sql")
        if not file.name.endswith(".duckdb.sql")
        for name in [file.name.removesuffix(".sql")]
    ]


def get_kpi(name: str) -> Kpi:
    kpis = {kpi.name: kpi for kpi in list_kpis()}
    if name not in kpis:
        raise AdpipeError(f"unknown KPI {name!r}; known: {', '.join(kpis)}")
    return kpis[name]


def run_clickhouse(client: Client, kpi: Kpi, filters: Filters) -> pl.DataFrame:
    sql = kpi.clickhouse_sql()
    used = set(re.findall(r"\{(\w+):", sql))
    parameters = {k: v for k, v in filters.values().items() if k in used}
    import polars as pl

    return pl.from_arrow(client.query_arrow(sql, parameters=parameters))


def run_duckdb(connection: Any, kpi: Kpi, filters: Filters) -> pl.DataFrame:
    sql = kpi.duckdb_sql()
    used = set(re.findall(r"\$(\w+)", sql))
    parameters = {k: v for k, v in filters.values().items() if k in used}
    import polars as pl

    return pl.from_arrow(connection.sql(sql, params=parameters).to_arrow_table())


def compute(settings: Settings, name: str, filters: Filters) -> pl.DataFrame:
    """One KPI from the warehouse; an advertiser or campaign filter must name one the warehouse has."""
    kpi = get_kpi(name)
    client = warehouse_client(settings)
    check_filtered_ids(client, filters)
    return run_clickhouse(client, kpi, filters)


def check_filtered_ids(client: Client, filters: Filters) -> None:
    """A mistyped id would otherwise give an empty result, which reads as "no traffic"."""
    for option, noun, value in (
        ("--advertiser", "advertiser", filters.advertiser_id),
        ("--campaign", "campaign", filters.campaign_id),
    ):
        if value is not None and not client.command(
            f"SELECT count() FROM live_{noun} WHERE id = {{id:UInt32}}", parameters={"id": value}
        ):
            raise AdpipeError(
                f"{option} {value}: the warehouse has no {noun} with that id (not in the source, in quarantine, or"
                " not synced yet)"
            )


def warehouse_client(settings: Settings) -> Client:
    """A client that only reads (ADPIPE_CLICKHOUSE_READER_URL when set), once the KPIs' tables are known to be there.

    It never creates the database: a read-only user may not, and reading needs nothing created.
    """
    from pipeline.warehouse import client as clickhouse

    try:
        client = clickhouse.connect(settings.for_reading(), create_database=False)
        # The newest schema object the KPIs read: missing before the first sync, or in a warehouse an older
        # adpipe created, and either way the engine's own error would not say what to do.
        ready = bool(client.command("EXISTS TABLE current_campaign"))
    except MissingDatabaseError:
        ready = False
    if not ready:
        raise AdpipeError(
            f"the warehouse (ClickHouse database {settings.clickhouse_database!r}) has no KPI tables yet: "
            "run `adpipe sync --mode full`, or `adpipe init` to update an existing warehouse's schema"
        )
    return client
