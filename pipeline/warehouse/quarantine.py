"""What the warehouse's `quarantine` table holds now: the rows set aside, per source table and reason; and the
source rows the warehouse accounts for, loaded or set aside."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


def quarantine_reasons(client: Client) -> list[tuple[str, str, int]]:
    """(source table, reason, rows) currently in quarantine (resolved entries excluded), by table and reason."""
    return client.query(
        "SELECT table_name, reason, count() FROM quarantine FINAL GROUP BY table_name, reason"
        " ORDER BY table_name, reason"
    ).result_rows


def quarantine_counts(client: Client) -> dict[str, int]:
    """Rows currently in quarantine per source table (resolved entries excluded)."""
    counts: dict[str, int] = {}
    for table, _, rows in quarantine_reasons(client):
        counts[table] = counts.get(table, 0) + rows
    return counts


def accounted_rows(client: Client, table: str, upto: int) -> int:
    """Source rows of fact `table` with id <= `upto` the warehouse accounts for: loaded, or set aside here."""
    return client.query(
        f"SELECT (SELECT count() FROM {table} WHERE id <= {{upto:UInt64}})"
        " + (SELECT uniqExact(source_id) FROM quarantine FINAL WHERE table_name = {table:String}"
        "    AND source_id <= {upto:UInt64})",
        parameters={"table": table, "upto": upto},
    ).result_rows[0][0]


def quarantined_ids(client: Client, reason: str | None = None) -> dict[str, set[int]]:
    """Source table → ids of its rows in quarantine now (for `reason` only, if given)."""
    ids: dict[str, set[int]] = {}
    rows = client.query(
        "SELECT table_name, source_id FROM quarantine FINAL WHERE {reason:Nullable(String)} IS NULL"
        " OR reason = {reason:Nullable(String)}",
        parameters={"reason": reason},
    ).result_rows
    for table, source_id in rows:
        ids.setdefault(table, set()).add(source_id)
    return ids
