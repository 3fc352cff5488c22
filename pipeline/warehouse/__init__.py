"""ClickHouse: the client (the embedded chDB engine or a server), the schema, and its cluster rendering."""
