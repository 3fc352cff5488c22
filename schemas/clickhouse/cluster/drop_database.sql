-- Cluster-only DDL (rendered by pipeline/cluster.py; `{name}` fields are filled with quoted identifiers).
-- The full load's shadow database, dropped on every node: before a load (what a failed one left) and after the
-- swap (the old data). SYNC waits until the replicated tables are gone, their Keeper metadata included.

DROP DATABASE IF EXISTS {database} ON CLUSTER {cluster} SYNC
