"""The ClickHouse warehouse schema: applying `schemas/clickhouse/*.sql` idempotently."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from pipeline.sqlfiles import SCHEMAS_DIR, statements

CLICKHOUSE_SCHEMA_DIR = SCHEMAS_DIR / "clickhouse"


def apply_schema(client: Client) -> None:
    """Create every warehouse table and view that is missing, in file order, in the client's database."""
    for path in sorted(CLICKHOUSE_SCHEMA_DIR.glob("*.sql")):
        for statement in statements(path):
            client.command(statement)
