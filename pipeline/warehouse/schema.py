"""The ClickHouse warehouse schema: applying `schemas/clickhouse/*.sql` idempotently."""

from __future__ import annotations

import logging
import re

from clickhouse_connect.driver.client import Client

from pipeline.catalog import AGGREGATES, FACTS
from pipeline.sqlfiles import sql_files, statements
from pipeline.warehouse.client import quote_identifier

log = logging.getLogger(__name__)


def apply_schema(client: Client) -> None:
    """Create every warehouse table and view that is missing, in file order, in the client's database; then bring
    tables an earlier adpipe created up to their current definition (CREATE … IF NOT EXISTS leaves them as they are).

    A `CREATE … IF NOT EXISTS` whose object exists would do nothing: it is not sent. On a warehouse already in place
    that leaves one query for the names, the `CREATE OR REPLACE` views, and one query for the upgrades, where every
    statement cost a round trip (and in-process, a turn of the interpreter) on every sync.
    """
    names = client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows
    existing = {name for (name,) in names}
    for file in sql_files("schemas", "clickhouse"):
        for statement in statements(file.read_text()):
            created = _IF_NOT_EXISTS.match(statement)
            if created is None or created["name"] not in existing:
                client.command(statement)
    _upgrade(client)


_IF_NOT_EXISTS = re.compile(
    r"\s*CREATE\s+(?:TABLE|MATERIALIZED\s+VIEW|VIEW|DICTIONARY)\s+IF\s+NOT\s+EXISTS\s+`?(?P<name>\w+)`?\s",
    re.IGNORECASE,
)


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
