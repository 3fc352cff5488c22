"""The source Postgres: the embedded server, connections with clear errors, the source schema, the seed's generator."""
