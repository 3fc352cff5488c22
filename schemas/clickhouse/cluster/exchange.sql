-- Cluster-only DDL (rendered by pipeline/cluster.py; `{name}` fields are filled with quoted identifiers).
-- The full load's swap of one stored table with its loaded twin in the shadow database, on every node. Each node
-- exchanges its own two tables atomically (metadata only; the Keeper paths go with the tables' UUIDs).

EXCHANGE TABLES {database}.{table} AND {shadow}.{table} ON CLUSTER {cluster}
