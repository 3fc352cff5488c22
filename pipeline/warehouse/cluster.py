"""The warehouse schema for a ClickHouse cluster, rendered from the single-node `schemas/clickhouse/*.sql`.

The single-node files stay the one source of truth for columns, keys, partitions and views; this module
only changes where each object lives, with ClickHouse's own machinery (ON CLUSTER DDL, Replicated*MergeTree
with Keeper, Distributed tables):

- The fact tables and their aggregates (`SHARDED`) become a `<name>_local` Replicated*MergeTree on every
  shard plus a Distributed table under the original name, sharded by campaign_id. The materialized views
  read the local fact table and write the local aggregate table, so each shard aggregates its own campaigns.
- Every other table (dimensions, quarantine, sync_runs, referral_events) is replicated to every node — one
  Keeper path for the whole cluster — so the KPIs' joins with the dimensions run locally on each shard.
- Views are created on every node.

The names the pipeline and the KPI SQL use therefore resolve to the same data as on one node.

A full load (pipeline/sync/load.py) uses the same rendering for its shadow database, and swaps it in with EXCHANGE
TABLES ON CLUSTER (`render_shadow`, `render_swap`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from pipeline.catalog import SHARDED
from pipeline.config import Settings, mask_url
from pipeline.errors import AdpipeError
from pipeline.sqlfiles import sql_files, sql_text, statements
from pipeline.warehouse import client as clickhouse
from pipeline.warehouse.client import quote_identifier

LOCAL_SUFFIX = "_local"

# Keeper paths. {uuid} is the table's own UUID, the same on every node because ON CLUSTER DDL assigns it
# once; it keeps paths unique across databases and through renames. A sharded table has one replica group
# per shard; a table on every node has a single group, so its replica names must be unique cluster-wide.
SHARD_REPLICATION = ("/clickhouse/tables/{uuid}/{shard}", "{replica}")
EVERY_NODE_REPLICATION = ("/clickhouse/tables/{uuid}/all", "{shard}-{replica}")

_CLUSTER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\s*(\(.*\))\s*ENGINE\s*=\s*(\w+)(.*)", re.S)
_CREATE_MV = re.compile(r"CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) TO (\w+) AS\s+(SELECT\b.*)", re.S)
_CREATE_VIEW = re.compile(r"CREATE OR REPLACE VIEW (\w+) AS\s+(SELECT\b.*)", re.S)
_TABLE_REFERENCE = re.compile(r"\b(FROM|JOIN)\s+(\w+)\b")
# The cluster argument of a Distributed engine as system.tables shows it (ClickHouse stores it as a string literal).
_DISTRIBUTED_CLUSTER = re.compile(r"Distributed\(\s*['`]?([A-Za-z_][A-Za-z0-9_-]*)['`]?\s*,")


@dataclass(frozen=True)
class _Target:
    cluster: str
    database: str

    def name(self, table: str) -> str:
        return f"{quote_identifier(self.database)}.{quote_identifier(table)}"

    @property
    def on_cluster(self) -> str:
        return f"ON CLUSTER {quote_identifier(self.cluster)}"


def render_cluster_schema(cluster: str, database: str) -> list[str]:
    """Every statement that creates the warehouse on `cluster`, in order, with database-qualified names."""
    if not _CLUSTER_NAME.fullmatch(cluster):
        raise AdpipeError(f"invalid cluster name {cluster!r}: use letters, digits, '_' and '-' (as in remote_servers)")
    target = _Target(cluster, database)
    create_database = _template("database.sql")
    rendered = [create_database.format(database=quote_identifier(database), cluster=quote_identifier(cluster))]
    for file in sql_files("schemas", "clickhouse"):
        for statement in statements(file.read_text()):
            rendered.extend(_render(statement, target, file.name))
    return rendered


def create_on_cluster(settings: Settings, cluster: str) -> None:
    """Create the warehouse on `cluster` through the configured server, which must be one of its nodes.

    Each ON CLUSTER statement returns once every node has run it. IF NOT EXISTS leaves existing objects alone,
    so this is for a database that a single-node `init` or `sync` has not filled.
    """
    rendered = render_cluster_schema(cluster, settings.clickhouse_database)
    if settings.clickhouse_is_embedded:
        raise AdpipeError(
            f"the embedded ClickHouse ({mask_url(settings.clickhouse_url)}) runs in this process and has no cluster "
            f"{cluster!r}: point ADPIPE_CLICKHOUSE_URL at a node of the cluster, or add --print to see the DDL"
        )
    run_on_cluster(clickhouse.connect(settings), rendered)


def run_on_cluster(client: Client, rendered: list[str]) -> None:
    """Run rendered ON CLUSTER statements in order: each returns once every node has run it, so the next can rely
    on what it made everywhere."""
    for statement in rendered:
        client.command(statement)


def _render(statement: str, target: _Target, source: str) -> list[str]:
    if match := _CREATE_TABLE.fullmatch(statement):
        return _render_table(target, *match.groups())
    if match := _CREATE_MV.fullmatch(statement):
        view, destination, select = match.groups()
        return [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {target.name(view)} {target.on_cluster} "
            f"TO {target.name(local_name(destination))} AS\n{_qualify(select, target)}"
        ]
    if match := _CREATE_VIEW.fullmatch(statement):
        view, select = match.groups()
        return [f"CREATE OR REPLACE VIEW {target.name(view)} {target.on_cluster} AS\n{_qualify(select, target)}"]
    # A new kind of statement in the single-node schema needs a decision here, not a silent copy.
    raise AdpipeError(f"cannot render this statement of {source} for a cluster: {statement.splitlines()[0]}")


def _render_table(target: _Target, table: str, columns: str, engine: str, rest: str) -> list[str]:
    arguments, tail = _engine_arguments(rest)
    path, replica = SHARD_REPLICATION if table in SHARDED else EVERY_NODE_REPLICATION
    replicated_arguments = ", ".join([f"'{path}'", f"'{replica}'", *([arguments] if arguments else [])])
    # Replicated tables deduplicate inserts through Keeper, with their own window setting.
    tail = re.sub(r"\bnon_replicated_deduplication_window\b", "replicated_deduplication_window", tail)
    stored = local_name(table)
    created = [
        f"CREATE TABLE IF NOT EXISTS {target.name(stored)} {target.on_cluster}\n{columns}\n"
        f"ENGINE = Replicated{engine}({replicated_arguments}){tail}"
    ]
    if table in SHARDED:
        created.append(
            _template("distributed.sql").format(
                database=quote_identifier(target.database),
                table=quote_identifier(table),
                local_table=quote_identifier(stored),
                cluster=quote_identifier(target.cluster),
                sharding_key=quote_identifier(SHARDED[table]),
            )
        )
    return created


def _engine_arguments(rest: str) -> tuple[str, str]:
    """Split `(args) tail` after an engine name into the arguments (nested parentheses allowed) and the tail."""
    if not rest.startswith("("):
        return "", rest
    depth = 0
    for index, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return rest[1:index].strip(), rest[index + 1 :]
    raise AdpipeError(f"unbalanced parentheses in an engine clause: {rest[:60]}")


def local_name(table: str) -> str:
    """Where a table's rows are stored on a node: the local table of a sharded one, else the table itself."""
    return f"{table}{LOCAL_SUFFIX}" if table in SHARDED else table


def _qualify(select: str, target: _Target) -> str:
    """A view's SELECT reading what is stored on the node it runs on, with database-qualified names."""
    return _TABLE_REFERENCE.sub(lambda m: f"{m[1]} {target.name(local_name(m[2]))}", select)


def _template(name: str) -> str:
    (statement,) = statements(sql_text("schemas", "clickhouse", "cluster", name))
    return statement


def warehouse_cluster(client: Client) -> str | None:
    """The cluster of the client's database if `init --cluster` made it (named by its Distributed tables), else None.

    A database with `<fact>_local` tables but no Distributed `impressions` is neither layout: refused, since a full
    load would swap the wrong tables.
    """
    if not client.command(f"EXISTS TABLE {quote_identifier('impressions' + LOCAL_SUFFIX)}"):
        return None
    engine = client.command(
        "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {name:String}",
        parameters={"name": "impressions"},
    )
    if match := _DISTRIBUTED_CLUSTER.match(str(engine)):
        return match[1]
    raise AdpipeError(
        f"ClickHouse database {client.database!r} has an impressions{LOCAL_SUFFIX} table but no Distributed "
        "impressions table: it is neither a single-node warehouse nor one `adpipe init --cluster` made"
    )


def render_shadow(cluster: str, shadow: str) -> list[str]:
    """The statements that create a full load's empty shadow database `shadow` on every node of `cluster`, in order.

    The warehouse's own rendering under the shadow's name: its Distributed tables point at the shadow's `_local`
    tables and its materialized views read and write the shadow's local tables, so loading the shadow's Distributed
    and replicated tables fills the shadow's aggregates on each shard and leaves the live ones alone. A shadow that
    a failed load left behind is dropped first.
    """
    return [_drop_database(cluster, shadow), *render_cluster_schema(cluster, shadow)]


def render_swap(cluster: str, database: str, shadow: str, tables: Sequence[str]) -> list[str]:
    """The statements that swap the loaded `tables` of `shadow` into `database` on every node, then drop the shadow.

    Only what stores rows is exchanged: a sharded table's `_local` table, and a replicated table itself. The
    Distributed tables stay put: each names its local table by database and table name, so the live ones, which
    name `database`, read the new rows once the locals are exchanged — an exchanged one would name the shadow,
    which is dropped. The materialized views, on each node, also name their source and target tables: the live
    views feed the new local aggregates after the exchange, and the shadow's views are dropped with the shadow.

    Each EXCHANGE is atomic per table on each node, not across nodes: for the moment between two nodes running
    it, a query over the Distributed table can read one shard's new rows beside another's old ones.
    """
    exchange = _template("exchange.sql")
    exchanges = [
        exchange.format(
            database=quote_identifier(database),
            shadow=quote_identifier(shadow),
            table=quote_identifier(local_name(table)),
            cluster=quote_identifier(cluster),
        )
        for table in tables
    ]
    return [*exchanges, _drop_database(cluster, shadow)]


def _drop_database(cluster: str, database: str) -> str:
    return _template("drop_database.sql").format(database=quote_identifier(database), cluster=quote_identifier(cluster))
