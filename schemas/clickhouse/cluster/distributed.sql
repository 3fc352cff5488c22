-- Cluster-only DDL (rendered by pipeline/cluster.py; `{name}` fields are filled with quoted identifiers).
-- The table the pipeline and the KPI SQL name, over the `<table>_local` replicated table of every shard.
-- It stores nothing: a SELECT fans out to one replica per shard and merges, an INSERT routes each row to
-- the shard of its sharding key. Sharding by campaign_id keeps a campaign's events and its aggregate rows
-- on one shard, so the materialized views aggregate a campaign completely where its events land.

CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER {cluster} AS {database}.{local_table}
ENGINE = Distributed({cluster}, {database}, {local_table}, {sharding_key})
