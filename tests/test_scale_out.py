"""From one node to many: the cluster DDL of `adpipe init --cluster`, the least-privilege users, the reader URL,
and the compose profile `cluster`.

There is no ClickHouse cluster (nor Docker) here: the rendered DDL and the users' SQL are parsed by the real
engine (`formatQuery` in chDB), their structure is checked against expectations written below, and the
rendered DDL is run, as each node of a cluster runs it, on a one-node cluster: a chDB process of its own whose
config defines the cluster, the macros and a Keeper. The replicated tables come up read-only there (that
Keeper is ClickHouse's in-process TestKeeper), so to load and query data the rendered schema — with its
replicated and Distributed engines swapped for single-node stand-ins — is run as a warehouse, to show the
materialized views and the unchanged KPI SQL resolve and compute right. The full load's shadow, swap and drop
are rendered and checked the same way, then run on the stand-ins with real runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import psycopg
import pytest
import yaml
from clickhouse_connect.driver.client import Client

from pipeline.analytics.kpi import Filters, compute
from pipeline.catalog import SWAPPED_TABLES
from pipeline.config import Settings
from pipeline.sqlfiles import statements
from pipeline.sync.execute import load_parts
from pipeline.sync.load import shadow_name
from pipeline.sync.stage import list_runs
from pipeline.warehouse import client as clickhouse
from pipeline.warehouse.cluster import render_cluster_schema, render_shadow, render_swap
from tests.conftest import run_cli
from tests.harness import refused_port
from tests.test_sync import seed_hand_built

ROOT = Path(__file__).resolve().parent.parent

CLUSTER = "adpipe"
"""The cluster name docs/operations.md and the compose profile use."""

SHARD_PATH = "'/clickhouse/tables/{uuid}/{shard}', '{replica}'"
EVERY_NODE_PATH = "'/clickhouse/tables/{uuid}/all', '{shard}-{replica}'"

# What every table must become on the cluster, written out by hand from schemas/clickhouse/*.sql.
EXPECTED_LOCAL_ENGINES = {
    "impressions_local": f"ReplicatedMergeTree({SHARD_PATH})",
    "clicks_local": f"ReplicatedMergeTree({SHARD_PATH})",
    "impressions_retracted_local": f"ReplicatedMergeTree({SHARD_PATH})",
    "clicks_retracted_local": f"ReplicatedMergeTree({SHARD_PATH})",
    "campaign_daily_local": f"ReplicatedSummingMergeTree({SHARD_PATH}, (impressions, clicks))",
    "campaign_hourly_local": f"ReplicatedSummingMergeTree({SHARD_PATH}, (impressions, clicks))",
    "advertiser": f"ReplicatedReplacingMergeTree({EVERY_NODE_PATH}, version, is_deleted)",
    "campaign": f"ReplicatedReplacingMergeTree({EVERY_NODE_PATH}, version, is_deleted)",
    "quarantine": f"ReplicatedReplacingMergeTree({EVERY_NODE_PATH}, version, is_resolved)",
    "sync_runs": f"ReplicatedReplacingMergeTree({EVERY_NODE_PATH}, updated_at)",
    "referral_events": f"ReplicatedMergeTree({EVERY_NODE_PATH})",
}
EXPECTED_DISTRIBUTED = {
    "impressions": "impressions_local",
    "clicks": "clicks_local",
    "impressions_retracted": "impressions_retracted_local",
    "clicks_retracted": "clicks_retracted_local",
    "campaign_daily": "campaign_daily_local",
    "campaign_hourly": "campaign_hourly_local",
}
EXPECTED_VIEWS = {  # materialized view: (reads, writes) — both on the shard the rows land on
    "impressions_daily_mv": ("impressions_local", "campaign_daily_local"),
    "clicks_daily_mv": ("clicks_local", "campaign_daily_local"),
    "impressions_hourly_mv": ("impressions_local", "campaign_hourly_local"),
    "clicks_hourly_mv": ("clicks_local", "campaign_hourly_local"),
    # Retractions subtract on the shard that holds the retracted version (same sharding key).
    "impressions_retracted_daily_mv": ("impressions_retracted_local", "campaign_daily_local"),
    "clicks_retracted_daily_mv": ("clicks_retracted_local", "campaign_daily_local"),
    "impressions_retracted_hourly_mv": ("impressions_retracted_local", "campaign_hourly_local"),
    "clicks_retracted_hourly_mv": ("clicks_retracted_local", "campaign_hourly_local"),
}
KPI_READS = {"campaign_daily", "campaign_hourly", "live_campaign", "live_advertiser"}
"""Every table or view some kpi_sql/*.sql reads (read off the files by hand)."""


def formatted(client: Client, sql: str) -> str:
    """The statement as ClickHouse's own parser reads it, on one line; raises if it does not parse."""
    return client.query("SELECT formatQuerySingleLine({q:String})", parameters={"q": sql}).result_rows[0][0]


@pytest.fixture
def cluster_ddl(settings: Settings) -> list[str]:
    client = clickhouse.connect(settings)
    return [formatted(client, statement) for statement in render_cluster_schema(CLUSTER, settings.clickhouse_database)]


def created(ddl: list[str], kind: str) -> dict[str, str]:
    """Name → statement for every `CREATE <kind>` of the rendered DDL, checking each is ON CLUSTER."""
    found = {}
    for statement in ddl:
        match = re.match(rf"CREATE (?:OR REPLACE )?{kind} (?:IF NOT EXISTS )?\w+\.(\w+) ON CLUSTER (\w+)\b", statement)
        if match:
            assert match[2] == CLUSTER, statement
            found[match[1]] = statement
    return found


ONE_NODE_CLUSTER = f"""<clickhouse>
    <!-- The node's own address: the Distributed tables' one shard is this process, read in place. -->
    <tcp_port>9000</tcp_port>
    <remote_servers>
        <{CLUSTER}>
            <shard>
                <internal_replication>true</internal_replication>
                <replica><host>127.0.0.1</host><port>9000</port></replica>
            </shard>
        </{CLUSTER}>
    </remote_servers>
    <macros><shard>01</shard><replica>clickhouse-s1</replica></macros>
    <zookeeper><implementation>testkeeper</implementation></zookeeper>
</clickhouse>
"""
"""A cluster named as in docs/operations.md, of one shard whose one replica is the chDB process itself."""

RUN_ON_THE_NODE = """
import json, os, sys, traceback
import chdb

# Leaves through os._exit, having printed everything: chDB's TestKeeper hangs or aborts when torn down at exit.
try:
    job = json.load(sys.stdin)
    node = chdb.connect(job["data"] + "?config-file=" + job["config"])
    query = lambda sql: node.query(sql, "JSONCompact").bytes() or b'{"data": []}'
    rows = lambda sql: json.loads(query(sql))["data"]
    for statement in job["statements"]:
        try:
            node.query(statement)
        except Exception as exc:
            raise RuntimeError(f"{exc}\\nin: {statement}") from None
    db = job["database"]
    print(json.dumps({
        "tables": rows(f"SELECT name, engine, engine_full FROM system.tables WHERE database = '{db}'"),
        "replicas": rows(f"SELECT table, zookeeper_path, replica_name FROM system.replicas WHERE database = '{db}'"),
        "counts": {name: rows(f"SELECT count() FROM {db}.{name}")[0][0] for name in job["reads"]},
    }))
except BaseException:
    traceback.print_exc()
    code = 1
else:
    code = 0
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
"""
"""Runs the statements in a fresh chDB process configured as the one-node cluster, then reports what they made."""


def table_uuid(name: str) -> uuid.UUID:
    """The UUID an ON CLUSTER initiator would assign `name`, here made up by the test so it can predict paths."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"adpipe-test/{name}")


def as_a_node_runs_it(statement: str) -> str:
    """The statement as ON CLUSTER hands it to each node: without the clause, and a new table with the UUID the
    initiator assigned (its `{uuid}` Keeper path is the same on every node)."""
    statement = re.sub(rf" ON CLUSTER {CLUSTER}\b", "", statement)
    return re.sub(r"^(CREATE TABLE IF NOT EXISTS \w+\.(\w+))", lambda m: f"{m[1]} UUID '{table_uuid(m[2])}'", statement)


def test_every_rendered_statement_runs_on_a_cluster_of_one_node(
    settings: Settings, cluster_ddl: list[str], tmp_path: Path
) -> None:
    db = settings.clickhouse_database
    # 1 database + 11 stored tables + 6 Distributed tables + 8 materialized views + 4 views.
    assert len(cluster_ddl) == 30
    assert cluster_ddl[0] == f"CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER {CLUSTER}"
    assert all(f" ON CLUSTER {CLUSTER}" in statement for statement in cluster_ddl)

    # chDB runs no distributed DDL queue (ON CLUSTER is refused there: "Replicated DDL queries are disabled"), so
    # the statements run as the queue would deliver them to this node.
    config = tmp_path / "cluster.xml"
    config.write_text(ONE_NODE_CLUSTER)
    readable = [*EXPECTED_DISTRIBUTED, "current_advertiser", "current_campaign", "live_advertiser", "live_campaign"]
    job = {
        "data": str(tmp_path / "node"),
        "config": str(config),
        "database": db,
        "statements": [as_a_node_runs_it(statement) for statement in cluster_ddl],
        "reads": readable,
    }
    ran = subprocess.run(
        [sys.executable, "-c", RUN_ON_THE_NODE], input=json.dumps(job), capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr
    node = json.loads(ran.stdout)

    engines = {name: engine for name, engine, _ in node["tables"]}
    assert engines == {
        **{name: engine.split("(")[0] for name, engine in EXPECTED_LOCAL_ENGINES.items()},
        **dict.fromkeys(EXPECTED_DISTRIBUTED, "Distributed"),
        **dict.fromkeys(EXPECTED_VIEWS, "MaterializedView"),
        **dict.fromkeys(("current_advertiser", "current_campaign", "live_advertiser", "live_campaign"), "View"),
    }
    # Each replicated table registered in Keeper at its path: per shard for the sharded locals (macro shard 01),
    # one group for the tables on every node, whose replica names must then be unique across shards.
    sharded = {name for name in EXPECTED_LOCAL_ENGINES if name.endswith("_local")}
    assert {table: (path, replica) for table, path, replica in node["replicas"]} == {
        name: (f"/clickhouse/tables/{table_uuid(name)}/01", "clickhouse-s1")
        if name in sharded
        else (f"/clickhouse/tables/{table_uuid(name)}/all", "01-clickhouse-s1")
        for name in EXPECTED_LOCAL_ENGINES
    }
    full_engines = {name: full for name, _, full in node["tables"]}
    for name, local in EXPECTED_DISTRIBUTED.items():
        assert full_engines[name] == f"Distributed('{CLUSTER}', '{db}', '{local}', campaign_id)"
    # The names the KPIs read resolve on the node: through the Distributed tables to its shard, through the views
    # to the tables on every node. Nothing is loaded, so each counts 0 rows.
    assert node["counts"] == dict.fromkeys(readable, 0)


def test_facts_and_aggregates_are_replicated_locally_and_distributed_by_campaign(
    settings: Settings, cluster_ddl: list[str]
) -> None:
    db = settings.clickhouse_database
    tables = created(cluster_ddl, "TABLE")
    assert set(tables) == set(EXPECTED_LOCAL_ENGINES) | set(EXPECTED_DISTRIBUTED)
    for name, engine in EXPECTED_LOCAL_ENGINES.items():
        assert f" ENGINE = {engine} " in tables[name] + " ", name
        assert "replicated_deduplication_window = 10000" in tables[name] or name in {"sync_runs", "referral_events"}
        assert "non_replicated" not in tables[name]
    for name, local in EXPECTED_DISTRIBUTED.items():
        assert tables[name].endswith(f"AS {db}.{local} ENGINE = Distributed({CLUSTER}, {db}, {local}, campaign_id)"), (
            tables[name]
        )


def test_materialized_views_aggregate_on_each_shard(settings: Settings, cluster_ddl: list[str]) -> None:
    db = settings.clickhouse_database
    views = created(cluster_ddl, "MATERIALIZED VIEW")
    assert set(views) == set(EXPECTED_VIEWS)
    for name, (source, target) in EXPECTED_VIEWS.items():
        assert f" TO {db}.{target} AS SELECT " in views[name]
        assert re.findall(r"FROM ([\w.]+)", views[name]) == [f"{db}.{source}"]


def test_every_table_the_kpis_read_is_distributed_or_on_every_node(settings: Settings, cluster_ddl: list[str]) -> None:
    db = settings.clickhouse_database
    read = set()
    for path in (ROOT / "kpi_sql").glob("*.sql"):
        if path.name.endswith(".duckdb.sql"):
            continue
        text = path.read_text()
        ctes = set(re.findall(r"(\w+) AS \(", text))
        read |= set(re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", text)) - ctes
    assert read == KPI_READS
    tables, views = created(cluster_ddl, "TABLE"), created(cluster_ddl, "VIEW")
    assert {"campaign_daily", "campaign_hourly"} <= set(EXPECTED_DISTRIBUTED) & set(tables)
    # The views the KPIs join read only tables replicated to every node, so each shard joins locally.
    assert set(views) == {"current_advertiser", "current_campaign", "live_campaign", "live_advertiser"}
    assert re.findall(r"FROM ([\w.]+)", views["current_advertiser"]) == [f"{db}.advertiser"]
    assert re.findall(r"FROM ([\w.]+)", views["current_campaign"]) == [f"{db}.campaign"]
    assert re.findall(r"FROM ([\w.]+)", views["live_advertiser"]) == [f"{db}.current_advertiser"]
    assert re.findall(r"FROM ([\w.]+)", views["live_campaign"]) == [f"{db}.current_campaign", f"{db}.live_advertiser"]
    assert EVERY_NODE_PATH in tables["advertiser"] and EVERY_NODE_PATH in tables["campaign"]


def single_node_stand_in(statement: str) -> str:
    """The rendered statement runnable in chDB, which has no cluster: no ON CLUSTER; plain engines, deduplicating
    inserts as the replicated ones do; in place of Distributed, a Buffer that writes every block straight through
    to the same local table (its max thresholds are 0) and reads it — a cluster of one shard."""
    statement = re.sub(r" ON CLUSTER \w+", "", statement)
    statement = re.sub(r"ENGINE = Replicated(\w+)\('[^']*', '[^']*'(?:, )?", r"ENGINE = \1(", statement)
    statement = re.sub(r"\breplicated_deduplication_window\b", "non_replicated_deduplication_window", statement)
    return re.sub(
        r"ENGINE = Distributed\(\w+, (\w+), (\w+), \w+\)", r"ENGINE = Buffer(\1, \2, 1, 0, 0, 0, 0, 0, 0)", statement
    )


def run_stand_ins(client: Client, rendered: list[str]) -> None:
    for statement in rendered:
        client.command(single_node_stand_in(formatted(client, statement)))


def test_the_kpi_sql_runs_unchanged_on_the_rendered_schema(settings: Settings, cluster_ddl: list[str]) -> None:
    client = clickhouse.connect(settings)
    for statement in map(single_node_stand_in, cluster_ddl):
        client.command(statement)
    client.command(
        "INSERT INTO advertiser (id, name, row_hash, version, is_deleted) VALUES (1, 'Acme', 0, 1, 0), "
        "(2, 'Globex', 0, 1, 0)"
    )
    client.command(
        "INSERT INTO campaign (id, name, bid, budget, start_date, end_date, advertiser_id, row_hash, version, "
        "is_deleted) VALUES (1, 'Spring', 1.50, 100, '2026-11-01', '2026-11-30', 1, 0, 1, 0), "
        "(2, 'Summer', 2.00, 200, '2026-11-01', '2026-11-30', 1, 0, 1, 0), "
        "(3, 'Autumn', 0.75, 50, '2026-11-01', '2026-11-30', 2, 0, 1, 0)"
    )
    # Rows go to the local tables, as a shard receives them; the views fill the local aggregates.
    client.command(
        "INSERT INTO impressions_local VALUES (1, 1, '2026-11-20 10:00:00'), (2, 1, '2026-11-20 23:59:59.999999'), "
        "(3, 1, '2026-11-21 00:00:00'), (4, 2, '2026-11-21 08:30:00')"
    )
    client.command("INSERT INTO clicks_local VALUES (1, 1, '2026-11-20 10:00:30'), (2, 1, '2026-11-21 00:01:00')")

    campaign_ctr = compute(settings, "campaign_ctr", Filters()).rows()
    assert campaign_ctr == [(1, "Spring", 3, 2, 2 / 3), (2, "Summer", 1, 0, 0.0), (3, "Autumn", 0, 0, None)]
    assert compute(settings, "advertiser_ctr", Filters()).rows() == [(1, "Acme", 4, 2, 0.5), (2, "Globex", 0, 0, None)]
    assert compute(settings, "ctr_heatmap", Filters()).rows() == [  # 2026-11-20 is a Friday, the 21st a Saturday
        (5, 10, 1, 1, 1.0),
        (5, 23, 1, 0, 0.0),
        (6, 0, 1, 1, 1.0),
        (6, 8, 1, 0, 0.0),
    ]


def test_init_cluster_print_writes_the_ddl_and_executes_nothing(settings: Settings, cluster_ddl: list[str]) -> None:
    result = run_cli("init", "--cluster", CLUSTER, "--print")
    assert result.exit_code == 0, result.stderr
    printed = [s for s in result.stdout.split(";\n\n") if s.strip()]
    assert len(printed) == 30
    client = clickhouse.connect(settings)
    assert [formatted(client, s) for s in printed] == cluster_ddl
    assert client.command("SELECT count() FROM system.tables WHERE database = currentDatabase()") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("init", "--cluster", CLUSTER), f"runs in this process and has no cluster '{CLUSTER}'"),
        (("init", "--print"), "--print shows the DDL for a cluster: add --cluster NAME"),
        (("init", "--cluster", "two words", "--print"), "invalid cluster name 'two words'"),
    ],
)
def test_init_cluster_bad_input_is_one_clear_line(settings: Settings, args: tuple[str, ...], message: str) -> None:
    result = run_cli(*args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_full_load_renders_shadow_exchange_and_drop_on_cluster(settings: Settings, cluster_ddl: list[str]) -> None:
    db = settings.clickhouse_database
    shadow = f"{db}__shadow"
    client = clickhouse.connect(settings)
    created_shadow = [formatted(client, s) for s in render_shadow(CLUSTER, shadow)]
    swap = [formatted(client, s) for s in render_swap(CLUSTER, db, shadow, SWAPPED_TABLES)]
    drop_shadow = f"DROP DATABASE IF EXISTS {shadow} ON CLUSTER {CLUSTER} SYNC"

    # A shadow a failed load left is dropped, then the whole warehouse is created again under the shadow's name:
    # the same 30 statements, each naming the shadow and never the live database.
    assert created_shadow[0] == drop_shadow
    assert created_shadow[1] == f"CREATE DATABASE IF NOT EXISTS {shadow} ON CLUSTER {CLUSTER}"
    assert len(created_shadow) == 1 + 30
    assert [re.sub(rf"\b{shadow}\b", db, s) for s in created_shadow[1:]] == cluster_ddl
    assert not any(re.search(rf"\b{db}\b", s) for s in created_shadow)
    assert all(f" ON CLUSTER {CLUSTER}" in s for s in created_shadow)
    # The shadow's Distributed tables route the load to the shadow's local tables; its views aggregate there.
    tables, views = created(created_shadow, "TABLE"), created(created_shadow, "MATERIALIZED VIEW")
    for name, local in EXPECTED_DISTRIBUTED.items():
        assert tables[name].endswith(f"ENGINE = Distributed({CLUSTER}, {shadow}, {local}, campaign_id)"), name
    for name, (source, target) in EXPECTED_VIEWS.items():
        assert f" TO {shadow}.{target} AS SELECT " in views[name]
        assert re.findall(r"FROM ([\w.]+)", views[name]) == [f"{shadow}.{source}"]

    # The swap exchanges what stores rows — dimensions first, as on one node — never a Distributed table (the
    # live ones keep naming the live database, whose locals then hold the new rows), then drops the old data.
    assert swap == [
        f"EXCHANGE TABLES {db}.{table} AND {shadow}.{table} ON CLUSTER {CLUSTER}"
        for table in (
            "advertiser",
            "campaign",
            "impressions_local",
            "clicks_local",
            "impressions_retracted_local",
            "clicks_retracted_local",
            "campaign_daily_local",
            "campaign_hourly_local",
            "quarantine",
        )
    ] + [drop_shadow]


def test_full_load_on_the_stand_in_cluster_replaces_the_data_and_the_live_views_feed_it(
    settings: Settings, pg: psycopg.Connection, cluster_ddl: list[str]
) -> None:
    seed_hand_built(pg)
    assert run_cli("sync").exit_code == 0  # stages the full run (and loads the single-node warehouse)
    pg.execute(
        "INSERT INTO impressions (campaign_id, created_at) VALUES "
        "(3, '2026-11-22 12:00:00'), (1, '2026-11-22 12:30:00')"
    )
    pg.execute("INSERT INTO clicks (campaign_id, created_at) VALUES (3, '2026-11-22 12:00:10')")
    assert run_cli("sync").exit_code == 0  # stages an incremental run: 2 impressions, 1 click
    full_run, incremental_run = list_runs(settings.staging_dir)

    # The same database, laid out as on the cluster, holding one stale row for the full load to replace.
    db, client = settings.clickhouse_database, clickhouse.connect(settings)
    client.command(f"DROP DATABASE {db} SYNC")
    for statement in map(single_node_stand_in, cluster_ddl):
        client.command(statement)
    client.command("INSERT INTO impressions VALUES (99, 9, '2026-10-01 00:00:00')")
    daily = "SELECT campaign_id, sum(impressions), sum(clicks) FROM campaign_daily GROUP BY campaign_id ORDER BY 1"

    shadow = shadow_name(db)
    run_stand_ins(client, render_shadow(CLUSTER, shadow))
    load_parts(client, full_run, database=shadow)
    load_parts(client, full_run, database=shadow)  # sent again, as after a broken connection: dropped as duplicates
    assert client.query(daily).result_rows == [(9, 1, 0)]  # readers still see the old data
    run_stand_ins(client, render_swap(CLUSTER, db, shadow, SWAPPED_TABLES))

    assert not client.command(f"EXISTS DATABASE {shadow}")
    assert client.query("SELECT campaign_id, count() FROM impressions GROUP BY 1 ORDER BY 1").result_rows == [
        (1, 3),
        (2, 1),
    ]
    assert client.query(daily).result_rows == [(1, 3, 2), (2, 1, 0)]
    assert client.command("SELECT count() FROM campaign FINAL") == 3

    # An incremental run goes in place: the live views now read and write the swapped-in local tables.
    load_parts(client, incremental_run)
    assert client.query(daily).result_rows == [(1, 4, 2), (2, 1, 0), (3, 1, 1)]
    assert client.query("SELECT sum(impressions) FROM campaign_hourly").result_rows == [(6,)]
    assert compute(settings, "campaign_ctr", Filters()).rows() == [
        (1, "Spring", 4, 2, 0.5),
        (2, "Summer", 1, 0, 0.0),
        (3, "Autumn", 1, 1, 1.0),
    ]


def test_sync_refuses_a_warehouse_with_local_tables_but_no_distributed_ones(
    settings: Settings, pg: psycopg.Connection
) -> None:
    seed_hand_built(pg)
    client = clickhouse.connect(settings)
    client.command("CREATE TABLE impressions_local (id UInt64) ENGINE = MergeTree ORDER BY id")
    result = run_cli("sync")  # the first sync is a full one; `impressions` is the single-node MergeTree
    assert result.exit_code == 1
    assert "has an impressions_local table but no Distributed impressions table" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not client.command(f"EXISTS DATABASE `{settings.clickhouse_database}__shadow`")
    assert client.command("SELECT count() FROM impressions") == 0
    assert not list((settings.staging_dir).glob("*/manifest.json"))


def test_read_only_commands_use_the_reader_url_and_sync_does_not(
    settings: Settings, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_hand_built(pg)
    with refused_port() as port:
        monkeypatch.setenv("ADPIPE_CLICKHOUSE_READER_URL", f"http://adpipe_reader:s3cret@127.0.0.1:{port}/adpipe")
        synced = run_cli("sync")
        assert synced.exit_code == 0, synced.stderr
        for args in (("kpi", "campaign_ctr"), ("chstats",), ("reconcile",)):
            result = run_cli(*args)
            assert result.exit_code == 1, args
            assert f"cannot reach ClickHouse at http://adpipe_reader:***@127.0.0.1:{port}/adpipe" in result.stderr, args
            assert "s3cret" not in result.stderr + result.stdout
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_READER_URL", settings.clickhouse_url)
    assert run_cli("kpi", "campaign_ctr", "--format", "csv").stdout.splitlines()[1:] == [
        "1,Spring,3,2,0.6666666666666666",
        "2,Summer,1,0,0.0",
        "3,Autumn,0,0,",
    ]


USERS_SQL = ROOT / "schemas" / "clickhouse" / "users" / "adpipe_users.sql"


def test_users_sql_parses_and_grants_least_privilege(settings: Settings) -> None:
    client = clickhouse.connect(settings)
    users = [formatted(client, statement) for statement in statements(USERS_SQL.read_text())]
    assert users == [
        "CREATE ROLE IF NOT EXISTS adpipe_write",
        "GRANT SELECT, INSERT, ALTER, CREATE, DROP, SHOW ON adpipe.* TO adpipe_write",
        "GRANT SELECT, INSERT, ALTER, CREATE, DROP, SHOW ON adpipe__shadow.* TO adpipe_write",
        "GRANT CLUSTER ON *.* TO adpipe_write",
        "CREATE ROLE IF NOT EXISTS adpipe_read",
        "GRANT SELECT, SHOW ON adpipe.* TO adpipe_read",
        "CREATE USER IF NOT EXISTS adpipe_writer IDENTIFIED WITH sha256_password BY {writer_password:String} "
        "DEFAULT DATABASE adpipe",
        "GRANT adpipe_write TO adpipe_writer",
        "CREATE USER IF NOT EXISTS adpipe_reader IDENTIFIED WITH sha256_password BY {reader_password:String} "
        "DEFAULT DATABASE adpipe",
        "GRANT adpipe_read TO adpipe_reader",
    ]


COMPOSE = ROOT / "docker-compose.yml"


def test_compose_cluster_profile_is_two_shards_and_keeper() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services, configs = compose["services"], compose["configs"]
    in_profile = {name for name, service in services.items() if "cluster" in service.get("profiles", [])}
    assert in_profile == {"clickhouse-keeper", "clickhouse-s1", "clickhouse-s2"}
    assert all("profiles" not in services[name] for name in ("postgres", "flyway", "clickhouse"))

    xml = {name: ET.fromstring(c["content"]) for name, c in configs.items() if c.get("content", "").startswith("<")}
    assert set(xml) == {"cluster-keeper", "cluster-servers", "cluster-macros-s1", "cluster-macros-s2"}

    servers = xml["cluster-servers"]
    (cluster,) = servers.find("remote_servers")
    assert cluster.tag == CLUSTER
    shards = [[r.findtext("host") for r in shard.findall("replica")] for shard in cluster.findall("shard")]
    assert shards == [["clickhouse-s1"], ["clickhouse-s2"]]
    assert all(shard.findtext("internal_replication") == "true" for shard in cluster.findall("shard"))

    keeper = xml["cluster-keeper"].find("keeper_server")
    node = servers.find("zookeeper/node")
    assert (node.findtext("host"), node.findtext("port")) == ("clickhouse-keeper", keeper.findtext("tcp_port"))
    assert services["clickhouse-keeper"]["hostname"] == "clickhouse-keeper"

    for shard_number, name in enumerate(("clickhouse-s1", "clickhouse-s2"), start=1):
        mounted = {c["source"]: c["target"] for c in services[name]["configs"]}
        macros = xml[f"cluster-macros-s{shard_number}"]
        assert mounted[f"cluster-macros-s{shard_number}"].startswith("/etc/clickhouse-server/config.d/")
        assert mounted["cluster-servers"].startswith("/etc/clickhouse-server/config.d/")
        assert macros.findtext("macros/shard") == f"0{shard_number}"
        assert macros.findtext("macros/replica") == services[name]["hostname"] == name
        assert "CLICKHOUSE_CLUSTER_SECRET" in services[name]["environment"]


def test_compose_creates_the_users_from_the_sql_file() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    sql_config = compose["configs"]["adpipe-users-sql"]
    assert (ROOT / sql_config["file"]).resolve() == USERS_SQL
    init_script = compose["configs"]["adpipe-users-init"]["content"]
    for name in ("clickhouse", "clickhouse-s1", "clickhouse-s2"):
        mounted = {c["source"]: c["target"] for c in compose["services"][name]["configs"]}
        assert mounted["adpipe-users-init"].startswith("/docker-entrypoint-initdb.d/")
        assert f"--queries-file {mounted['adpipe-users-sql']}" in init_script
        environment = compose["services"][name]["environment"]
        assert {"CLICKHOUSE_WRITER_PASSWORD", "CLICKHOUSE_READER_PASSWORD"} <= set(environment)
    # Every query parameter of the SQL is given, from the container's environment (not expanded by Compose).
    assert set(re.findall(r"\{(\w+):String\}", USERS_SQL.read_text())) == set(
        re.findall(r"--param_(\w+)=\"\$\$\{CLICKHOUSE_\w+\}\"", init_script)
    )


def test_readme_documents_the_compose_cluster_and_both_users() -> None:
    """docs/operations.md (From one node to many) shows the cluster DDL command, the profile and both users."""
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert f"adpipe init --cluster {CLUSTER} --print" in operations
    assert "--profile cluster" in operations
    assert all(name in operations for name in ("adpipe_writer", "adpipe_reader", "ADPIPE_CLICKHOUSE_READER_URL"))
