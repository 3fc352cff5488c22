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
    """Signed aggregate counts (retractions subtract), patch-part deletes on the facts, and merged-away parts and
    applied patch parts deleted as the engine opens (`schemas/clickhouse/005_sync_runs.sql`; a single node's tables):
    one query when current.
    """
    outdated = client.query(
        "SELECT 'signed', table, name FROM system.columns WHERE database = currentDatabase()"
        " AND table IN {aggregates:Array(String)} AND name IN ('impressions', 'clicks') AND type = 'UInt64'"
        " UNION ALL SELECT 'patches', name, '' FROM system.tables WHERE database = currentDatabase()"
        " AND name IN {facts:Array(String)} AND create_table_query NOT LIKE '%enable_block_number_column = 1%'"
        " UNION ALL SELECT 'cleanup', name, '' FROM system.tables WHERE database = currentDatabase()"
        " AND engine IN ('MergeTree', 'ReplacingMergeTree', 'SummingMergeTree')"
        " AND create_table_query NOT LIKE '%merge_tree_clear_old_parts_interval_seconds = 0%'",
        parameters={"aggregates": list(AGGREGATES), "facts": list(FACTS)},
    ).result_rows
    for upgrade, table, column in outdated:
        log.info("upgrading %s: %s", table, upgrade)
        change = _UPGRADES[upgrade].format(column=quote_identifier(column) if column else "")
        client.command(f"ALTER TABLE {quote_identifier(table)} {change}")


_UPGRADES = {
    "signed": "MODIFY COLUMN {column} Int64",
    "patches": "MODIFY SETTING enable_block_number_column = 1, enable_block_offset_column = 1",
    "cleanup": (
        "MODIFY SETTING cleanup_delay_period = 1, max_cleanup_delay_period = 1, cleanup_delay_period_random_add = 0,"
        " merge_tree_clear_old_parts_interval_seconds = 0"
    ),
}
