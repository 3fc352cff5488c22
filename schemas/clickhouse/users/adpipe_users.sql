-- adpipe's two ClickHouse users, with least privilege, on the `adpipe` database (compose's CLICKHOUSE_DB default).
--
-- * adpipe_writer (role adpipe_write), used by `sync`, `replay`, `init`, `status`, `events load`: creates and
--   replaces the schema and loads data. A full sync also builds `adpipe__shadow` and swaps it in with
--   EXCHANGE TABLES (SELECT + INSERT + CREATE + DROP on both sides); `events load` replaces days with
--   ALTER TABLE ... DROP PARTITION; CLUSTER allows the ON CLUSTER DDL of `adpipe init --cluster`.
-- * adpipe_reader (role adpipe_read), used by `kpi`, `chstats` and `reconcile` through
--   ADPIPE_CLICKHOUSE_READER_URL: SELECT only. The KPI views are SQL SECURITY INVOKER (ClickHouse's default for
--   plain views), so the reader's own SELECT on the tables is what they need.
--
-- The passwords are query parameters, never in this file: the compose stack's init script runs it with
-- `clickhouse client --param_writer_password=... --param_reader_password=...` from the environment.
-- IF NOT EXISTS everywhere: running it again changes nothing.

CREATE ROLE IF NOT EXISTS adpipe_write;
GRANT SELECT, INSERT, ALTER, CREATE, DROP, SHOW ON adpipe.* TO adpipe_write;
GRANT SELECT, INSERT, ALTER, CREATE, DROP, SHOW ON adpipe__shadow.* TO adpipe_write;
GRANT CLUSTER ON *.* TO adpipe_write;

CREATE ROLE IF NOT EXISTS adpipe_read;
GRANT SELECT, SHOW ON adpipe.* TO adpipe_read;

CREATE USER IF NOT EXISTS adpipe_writer IDENTIFIED WITH sha256_password BY {writer_password:String}
    DEFAULT DATABASE adpipe;
GRANT adpipe_write TO adpipe_writer;

CREATE USER IF NOT EXISTS adpipe_reader IDENTIFIED WITH sha256_password BY {reader_password:String}
    DEFAULT DATABASE adpipe;
GRANT adpipe_read TO adpipe_reader;
