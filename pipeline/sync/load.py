"""Loading staged Parquet parts into ClickHouse, exactly once.

Each part is sent as Parquet bytes (never as Python rows) with an insert_deduplication_token
derived from its run and checksum, and with deduplication extended to the materialized views, so a
part retried after a crash is dropped by the base table and by the aggregates alike. When the
staging is on S3, ClickHouse reads the part itself with its `s3()` table function instead
(`INSERT … SELECT … FROM s3(…)`), with the same token: the bytes never pass through adpipe.

A full load goes into a shadow database that is swapped in table by table with EXCHANGE
TABLES (atomic per table), so readers never see a half-loaded table. On a cluster warehouse
(`adpipe init --cluster`) the shadow is created, swapped and dropped ON CLUSTER, with the
warehouse's own cluster rendering (pipeline/warehouse/cluster.py: `render_shadow`, `render_swap`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import PurePath

from clickhouse_connect.driver.client import Client

from pipeline.catalog import SWAPPED_TABLES
from pipeline.errors import WarehouseError, first_line
from pipeline.killpoints import kill_point
from pipeline.storage import LocalStore, Store, s3_credentials
from pipeline.warehouse.client import is_embedded, quote_identifier
from pipeline.warehouse.cluster import local_name, render_shadow, render_swap, run_on_cluster, warehouse_cluster
from pipeline.warehouse.schema import apply_schema

log = logging.getLogger(__name__)


_INSERT_SETTINGS = {
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    # On a cluster the fact tables are Distributed: insert into the shards before returning (not through the
    # node's background queue), so a committed run is on its shards. The token and the setting above travel
    # with each shard's share of the part. A no-op for a table that is not Distributed.
    "distributed_foreground_insert": 1,
}


def load_part(
    client: Client,
    table: str,
    store: Store,
    path: PurePath,
    sha256: str,
    columns: list[str],
    run_id: str | None,
    database: str | None = None,
) -> None:
    """Insert one staged part of run `run_id` (whose columns are `columns`); a second insert of the same part of the
    same run is a no-op.

    That is also what makes the part safe to resend when a server connection breaks mid-insert
    (pipeline.warehouse.client retries inserts that carry an insert_deduplication_token). The token names the run:
    two runs may stage the same bytes (a fact changed and changed back loads its first version again), and the
    second is a new insert, not a repeat. `run_id` None: a run an earlier adpipe staged (`Run.token_run_id`).
    """
    target = quote_identifier(table) if database is None else f"{quote_identifier(database)}.{quote_identifier(table)}"
    token = f"{table}:{sha256}" if run_id is None else f"{table}:{run_id}:{sha256}"
    settings = {**_INSERT_SETTINGS, "insert_deduplication_token": token}
    if isinstance(store, LocalStore):
        client.raw_insert(target, insert_block=store.read_bytes(path), fmt="Parquet", settings=settings)
        kill_point("part-loaded")
        return
    # The token deduplicates block by block, so a retry must cut the part into the same blocks:
    # one reading thread keeps the blocks in file order, as the byte path does. ClickHouse's own
    # S3 retries default to hundreds: an endpoint it cannot reach would hang the load for minutes.
    settings |= {"max_threads": 1, "max_insert_threads": 1, "s3_retry_attempts": 10, "s3_connect_timeout_ms": 5000}
    names = ", ".join(quote_identifier(c) for c in columns)
    source, parameters = _s3_source(store, path)
    log.debug("loading %s into %s from %s", path.name, target, parameters["url"])
    client.command(
        f"INSERT INTO {target} ({names}) SELECT {names} FROM {source}", parameters=parameters, settings=settings
    )
    kill_point("part-loaded")


def delete_retracted(client: Client, fact: str, retracted: str, run_id: str) -> None:
    """Delete from `fact` the versions run `run_id` retracted: after its retractions are loaded, before its new rows.

    Matched on every column, never on the id alone: a retried load runs this again after the new version of a row
    may have arrived, and the new version always differs from the one retracted (`fact_changes`). A lightweight
    delete as a patch part touches only the rows matched; on a cluster each shard deletes its own rows, which
    its own retractions name (both are sharded by campaign_id).
    """
    cluster = warehouse_cluster(client)
    target, source, on_cluster = quote_identifier(fact), quote_identifier(retracted), ""
    if cluster is not None:
        target, source = quote_identifier(local_name(fact)), quote_identifier(local_name(retracted))
        on_cluster = f" ON CLUSTER {quote_identifier(cluster)}"
    of_run = f"FROM {source} WHERE run_id = {{run_id:String}}"
    # The id test first, though the tuple test implies it: it filters the rows before the tuples are built and
    # looked up, which cost more than half the delete (docs/performance.md, Change capture).
    client.command(
        f"DELETE FROM {target}{on_cluster} WHERE id IN (SELECT id {of_run})"
        f" AND (campaign_id, created_at, id) IN (SELECT campaign_id, created_at, id {of_run})",
        parameters={"run_id": run_id},
        settings={"lightweight_delete_mode": "lightweight_update"},
    )
    kill_point("retracted")


def fold_deletes(client: Client, facts: Iterable[str]) -> None:
    """On the embedded engine, fold the patch parts `delete_retracted` left in `facts` into their data parts now: a
    mutation per table that rewrites their deleted-rows mask. It changes no row, so it may wait until the run is
    committed.

    A read of a part with patches pending reads every column of every row to apply them, so the next run's
    comparison with the held versions (`fact_changes`) and its delete grew with each run's patches. Merges fold
    patches only into the parts they merge, and the embedded engine runs only while its process does: its large
    parts kept every patch (docs/performance.md, Change capture). A server is left to its merges and its operator
    (docs/change-capture.md). A fold that fails is logged and left to a later run.
    """
    if is_embedded(client):
        for fact in facts:
            _apply_patches(client, quote_identifier(fact))


def _apply_patches(client: Client, table: str) -> None:
    try:
        client.command(f"ALTER TABLE {table} APPLY PATCHES", settings={"mutations_sync": 1})
    except WarehouseError as exc:
        # The delete is committed and every read applies its patch parts: the rows are right, only slower to read.
        # The mutation stays queued behind whatever blocks it (another mutation that fails, say); a later run adds
        # its own, and the engine folds them all once the way is clear.
        log.warning(
            "the deleted rows of %s are not folded into its parts yet (%s): its rows are right, and read more slowly"
            " until they are; system.mutations shows what holds them",
            table,
            first_line(exc),
        )


def _s3_source(store: Store, path: PurePath) -> tuple[str, dict[str, str]]:
    """The `s3()` call reading a part, and its parameters.

    Bound as query parameters, so the key, secret and token are in no query text (nor ClickHouse's
    query log). Without credentials in the environment, ClickHouse uses its own (a server's config).
    """
    parameters = {"url": store.http_url(path)}
    credentials = s3_credentials()
    if credentials is None:
        return "s3({url:String}, 'Parquet')", parameters
    key, secret, token = credentials
    parameters |= {"key": key, "secret": secret}
    if token is None:
        return "s3({url:String}, {key:String}, {secret:String}, 'Parquet')", parameters
    parameters["token"] = token
    return "s3({url:String}, {key:String}, {secret:String}, {token:String}, 'Parquet')", parameters


def shadow_name(database: str) -> str:
    return f"{database}__shadow"


def create_shadow(client: Client) -> str:
    """An empty copy of the warehouse schema beside the live database, for a full load.

    On a cluster it is created on every node, with Distributed tables over its own `_local` tables: the load
    inserts into the shadow as it would into the live warehouse.
    """
    shadow = shadow_name(client.database)
    if (cluster := warehouse_cluster(client)) is not None:
        run_on_cluster(client, render_shadow(cluster, shadow))
        return shadow
    client.command(f"DROP DATABASE IF EXISTS {quote_identifier(shadow)} SYNC")
    client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(shadow)}")
    with using_database(client, shadow):
        apply_schema(client)
    return shadow


def drop_shadow(client: Client, shadow: str) -> None:
    """Best effort, after a full load failed before its swap: the next full load would replace it anyway."""
    try:
        cluster = warehouse_cluster(client)
        on_cluster = "" if cluster is None else f" ON CLUSTER {quote_identifier(cluster)}"
        client.command(f"DROP DATABASE IF EXISTS {quote_identifier(shadow)}{on_cluster} SYNC")
    except Exception:
        log.warning("could not drop %s, the shadow database of a failed full load", shadow, exc_info=True)


def swap_in(client: Client, shadow: str) -> None:
    """Exchange every replaced table with its loaded shadow twin, then drop the old data.

    The live materialized views write to tables by name, so after the exchange they feed the new tables.
    On a cluster, see `render_swap` for what is exchanged on every node and why the Distributed tables are not.
    """
    if (cluster := warehouse_cluster(client)) is not None:
        run_on_cluster(client, render_swap(cluster, client.database, shadow, SWAPPED_TABLES))
        log.info("swapped the full load into %s on cluster %s", client.database, cluster)
        return
    live = quote_identifier(client.database)
    for table in SWAPPED_TABLES:
        name = quote_identifier(table)
        client.command(f"EXCHANGE TABLES {live}.{name} AND {quote_identifier(shadow)}.{name}")
        kill_point("swap")
    client.command(f"DROP DATABASE IF EXISTS {quote_identifier(shadow)} SYNC")
    log.info("swapped the full load into %s", client.database)


@contextmanager
def using_database(client: Client, database: str) -> Iterator[None]:
    previous = client.database
    client.database = database
    try:
        yield
    finally:
        client.database = previous
