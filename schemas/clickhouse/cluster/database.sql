-- Cluster-only DDL (rendered by pipeline/cluster.py; `{name}` fields are filled with quoted identifiers).
-- The warehouse database on every node of the cluster. Atomic (the default engine) gives each table a UUID,
-- which the Keeper paths of the replicated tables use.

CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster}
