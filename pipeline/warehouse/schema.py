"""The ClickHouse warehouse schema: applying `schemas/clickhouse/*.sql` idempotently."""

from __future__ import annotations

import logging

from clickhouse_connect.driver.client import Client

from pipeline.catalog import AGGREGATES, FACTS
from pipeline.sqlfiles import sql_files, statements
from pipeline.warehouse.client import quote_identifier

log = logging.getLogger(__name__)


def apply_schema(client: Client) -> None:
    """Create every warehouse table and view that is missing, in file order, in the client's database; then bring
    tables an earlier adpipe created up to their current definition (CREATE … IF NOT EXISTS leaves them as they are).
    """
    for file in sql_files("schemas", "clickhouse"):
        for statement in statements(file.read_text()):
            client.command(statement)
    _upgrade(client)


def _upgrade(client: Client) -> None:
    """Signed aggregate counts (retractions subtract) and patch-part deletes on the facts: one query when current."""
    outdated = client.query(
        "SELECT table, name FROM system.columns WHERE database = currentDatabase()"
        " AND ((table IN {aggregates:Array(String)} AND name IN ('impressions', 'clicks') AND type = 'UInt64')"
        " OR (table IN {facts:Array(String)} AND name = 'id' AND table NOT IN ("
        "     SELECT name FROM system.tables WHERE database = currentDatabase()"
        "     AND create_table_query LIKE '%enable_block_number_column = 1%')))",
        parameters={"aggregates": list(AGGREGATES), "facts": list(FACTS)},
    ).result_rows
    for table, column in outdated:
        name = quote_identifier(table)
        if table in AGGREGATES:
            log.info("upgrading %s.%s to a signed count", table, column)
            client.command(f"ALTER TABLE {name} MODIFY COLUMN {quote_identifier(column)} Int64")
        else:
            log.info("upgrading %s for patch-part deletes", table)
            client.command(
                f"ALTER TABLE {name} MODIFY SETTING enable_block_number_column = 1, enable_block_offset_column = 1"
            )
