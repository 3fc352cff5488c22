"""The ClickHouse warehouse schema: applying `schemas/clickhouse/*.sql` idempotently."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from pipeline.sqlfiles import sql_files, statements


def apply_schema(client: Client) -> None:
    """Create every warehouse table and view that is missing, in file order, in the client's database."""
    for file in sql_files("schemas", "clickhouse"):
        for statement in statements(file.read_text()):
            client.command(statement)
