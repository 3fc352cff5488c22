"""Settings from the environment and `.env`, and passwords kept out of everything printed."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from pipeline.config import load_settings, mask_url
from pipeline.errors import SourceError, is_transient
from pipeline.source.postgres import EmbeddedPostgres
from tests.conftest import run_cli

VARIABLES = (
    "ADPIPE_HOME",
    "ADPIPE_POSTGRES_URL",
    "ADPIPE_POSTGRES_REPLICA_URL",
    "ADPIPE_CLICKHOUSE_URL",
    "ADPIPE_CLICKHOUSE_DATABASE",
    "ADPIPE_STAGING_DIR",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_DB",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
)


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No adpipe variable set, cwd an empty directory; returns it.

    Each variable is set then deleted so monkeypatch restores it afterwards, even when `.env`
    loading (which writes into os.environ) sets it during the test.
    """
    for name in VARIABLES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_run_embedded_under_cwd(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.home == clean_env / ".adpipe"
    assert settings.postgres_url is None
    assert settings.embedded_postgres_dir == clean_env / ".adpipe" / "postgres"
    assert settings.clickhouse_url == f"chdb://{clean_env}/.adpipe/clickhouse"
    assert settings.clickhouse_is_embedded
    assert settings.clickhouse_database == "adpipe"
    assert settings.staging_dir == clean_env / "staging"


def test_dotenv_is_read_but_the_environment_wins(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text(
        "ADPIPE_HOME=/srv/from-dotenv\nADPIPE_STAGING_DIR=/srv/staging-from-dotenv\nADPIPE_CLICKHOUSE_DATABASE=dotenv_db\n"
    )
    monkeypatch.setenv("ADPIPE_STAGING_DIR", "/srv/staging-from-env")
    settings = load_settings()
    assert settings.home == Path("/srv/from-dotenv")
    assert settings.clickhouse_url == "chdb:///srv/from-dotenv/clickhouse"
    assert settings.staging_dir == Path("/srv/staging-from-env")
    assert settings.clickhouse_database == "dotenv_db"


def test_a_dotenv_line_that_does_not_parse_stops_the_command(clean_env: Path) -> None:
    """Skipped, as python-dotenv skips it with a warning, the setting would leave the embedded default in its place:
    the command would run against another database and exit 0."""
    (clean_env / ".env").write_text('ADPIPE_HOME=/srv/home\nADPIPE_POSTGRES_URL="postgresql://u:s3cret@db:1/ads\n')
    result = run_cli("stats")
    assert (result.exit_code, result.stderr) == (
        1,
        f"error: {clean_env / '.env'}: line 2 is not NAME=value (an unclosed quote?)\n",
    )
    assert not (clean_env / ".adpipe").exists()


def test_seed_postgres_variables_make_the_url(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "db.example")
    monkeypatch.setenv("POSTGRES_PORT", "6543")
    monkeypatch.setenv("POSTGRES_DB", "ads")
    monkeypatch.setenv("POSTGRES_USER", "ad min")
    monkeypatch.setenv("POSTGRES_PASSWORD", "p@ss:w/rd")
    url = load_settings().postgres_url
    assert url == "postgresql://ad%20min:p%40ss%3Aw%2Frd@db.example:6543/ads"
    # libpq reads back exactly what was configured.
    parsed = psycopg.conninfo.conninfo_to_dict(url)
    assert (parsed["user"], parsed["password"], parsed["host"], parsed["port"], parsed["dbname"]) == (
        "ad min",
        "p@ss:w/rd",
        "db.example",
        "6543",
        "ads",
    )


def test_seed_variables_defaults_and_precedence(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "db.example")
    assert load_settings().postgres_url == "postgresql://postgres@db.example:5432/postgres"
    monkeypatch.setenv("ADPIPE_POSTGRES_URL", "postgresql://u@elsewhere/x")
    assert load_settings().postgres_url == "postgresql://u@elsewhere/x"


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("http://default:pw@localhost:8123/adpipe", "adpipe"),
        ("https://ch.example:8443/sales", "sales"),
        ("http://localhost:8123", "adpipe"),
        ("http://localhost:8123/sales%20eu", "sales eu"),  # percent-decoded, as the user and password are
    ],
)
def test_clickhouse_database_from_server_url_path(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, url: str, database: str
) -> None:
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", url)
    settings = load_settings()
    assert not settings.clickhouse_is_embedded
    assert settings.clickhouse_database == database
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_DATABASE", "explicit")
    assert load_settings().clickhouse_database == "explicit"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://adpipe:s3cret@db:5432/ads", "postgresql://adpipe:***@db:5432/ads"),
        ("postgresql://:s3cret@db/ads", "postgresql://:***@db/ads"),
        ("http://default:s3cret@localhost:8123/adpipe", "http://default:***@localhost:8123/adpipe"),
        (
            "postgresql://adpipe@db/ads?sslmode=require&password=s3cret",
            "postgresql://adpipe@db/ads?sslmode=require&password=***",
        ),
        ("postgresql://a:s3cret@db/ads?Password=s3cret", "postgresql://a:***@db/ads?Password=***"),
        ("postgresql://adpipe@db/ads", "postgresql://adpipe@db/ads"),
        ("chdb:///tmp/home/clickhouse", "chdb:///tmp/home/clickhouse"),
        # Reserved characters a password should have percent-encoded end the host part early: all of it is hidden.
        ("postgresql://adpipe:hun/ter2@db:5432/ads", "postgresql://***@db:5432/ads"),
        ("postgresql://adpipe:hun#ter2@db/ads", "postgresql://***@db/ads"),
        ("postgresql://adpipe:hun?ter2@db/ads", "postgresql://***@db/ads"),
        ("http://default:12/34@localhost:8123/adpipe", "http://***@localhost:8123/adpipe"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    ["postgresql://adpipe:s3cret@127.0.0.1:1/ads", "postgresql://adpipe@127.0.0.1:1/ads?password=s3cret"],
)
def test_unreachable_postgres_error_hides_the_password(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("ADPIPE_POSTGRES_URL", url)
    result = run_cli("stats")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach Postgres at postgresql://adpipe")
    assert result.stderr.count("\n") == 1
    assert "***" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_a_source_failure_says_which_server_and_whether_to_retry(clean_env: Path, pg_server_url: str) -> None:
    """Refused connection: transient (the server may come back). Server answered no: not transient."""
    from pipeline.errors import SourceError
    from pipeline.source.postgres import connect

    settings = load_settings()
    down = "postgresql://adpipe:s3cret@127.0.0.1:1/ads"
    with pytest.raises(SourceError) as refused:
        connect(replace(settings, postgres_url=down))
    assert (refused.value.url, refused.value.transient) == ("postgresql://adpipe:***@127.0.0.1:1/ads", True)
    no_database = pg_server_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(SourceError, match='database "no_such_database" does not exist') as answered:
        connect(replace(settings, postgres_url=no_database))
    assert answered.value.transient is False


def test_unreachable_clickhouse_error_hides_the_password(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", "http://default:s3cret@127.0.0.1:1/adpipe")
    # A real process: in-process runs share pytest's logging setup, which would hide the driver's warnings.
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "init"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    # One line: the HTTP driver's retry warnings are not shown without -v.
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: cannot reach ClickHouse at http://default:***@127.0.0.1:1/adpipe")
    assert "s3cret" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("url", "pool"),
    [
        ("https://default:s3cret@127.0.0.1:1/adpipe", "HTTPSConnection"),  # https:// on any port means TLS
        ("http://default:s3cret@127.0.0.1:1/adpipe", "HTTPConnection"),
        ("http://default:s3cret@127.0.0.1:8443/adpipe", "HTTPSConnection"),  # clickhouse-connect: TLS port
    ],
)
def test_clickhouse_url_scheme_chooses_tls(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, url: str, pool: str
) -> None:
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", url)
    result = run_cli("init")
    assert result.exit_code == 1
    assert f"{pool}(host='127.0.0.1'" in result.stderr


def test_a_sync_with_both_servers_unreachable_is_one_line(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source opens on a thread while the warehouse opens: when both fail, one of them is reported, in one line,
    and the process ends (no thread left waiting, no traceback)."""
    monkeypatch.setenv("ADPIPE_POSTGRES_URL", "postgresql://adpipe:s3cret@127.0.0.1:1/ads")
    monkeypatch.setenv("ADPIPE_CLICKHOUSE_URL", "http://default:s3cret@127.0.0.1:1/adpipe")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "sync", "--mode", "full"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        ("error: cannot reach ClickHouse at http://default:***@127.0.0.1:1/adpipe", "error: cannot reach Postgres at")
    ), result.stderr
    assert "s3cret" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("name", "value", "schemes"),
    [
        ("ADPIPE_POSTGRES_URL", "host=db.internal password=s3cret dbname=ads", "postgresql:// or postgres://"),
        ("ADPIPE_POSTGRES_REPLICA_URL", "db.internal:5432", "postgresql:// or postgres://"),
        ("ADPIPE_CLICKHOUSE_URL", "ftp://default:s3cret@db.internal", "chdb:// or http:// or https://"),
        ("ADPIPE_CLICKHOUSE_READER_URL", "tcp://adpipe_reader@db.internal:9000", "chdb:// or http:// or https://"),
    ],
)
def test_a_server_setting_that_is_not_a_url_of_its_kind_is_one_line_without_its_value(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, schemes: str
) -> None:
    """Before anything connects: a key=value connection string would otherwise reach the driver and come back as a
    traceback, and a URL of another scheme would be tried as an HTTP server. The value may hold a password."""
    monkeypatch.setenv(name, value)
    result = run_cli("sync")
    assert (result.exit_code, result.stderr) == (1, f"error: {name} must be a URL starting with {schemes}\n")
    assert not (clean_env / ".adpipe").exists()


def test_a_home_or_staging_directory_the_file_system_refuses_is_one_line(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / "a-file").write_text("")
    monkeypatch.setenv("ADPIPE_HOME", str(clean_env / "a-file" / "home"))
    result = run_cli("sync")
    assert (result.exit_code, result.stderr) == (1, f"error: {clean_env / 'a-file' / 'home'}: Not a directory\n")
    monkeypatch.setenv("ADPIPE_HOME", str(clean_env / "home"))
    monkeypatch.setenv("ADPIPE_STAGING_DIR", str(clean_env / "a-file"))
    result = run_cli("sync")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "a-file" in result.stderr and "Not a directory" in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ADPIPE_CLICKHOUSE_URL", "http://adpipe:hun/ter2@db:8123/adpipe", "has no valid port"),
        ("ADPIPE_CLICKHOUSE_READER_URL", "http://reader:s3cret@db:99999/adpipe", "has no valid port"),
        ("ADPIPE_CLICKHOUSE_URL", "http://db:8123/adpipe?user=adpipe&password=s3cret", "give the user and password"),
    ],
)
def test_a_clickhouse_url_the_driver_cannot_parse_is_one_line_without_its_value(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    result = run_cli("status")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {name}") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    assert "s3cret" not in result.stderr and "ter2" not in result.stderr


def test_a_postgres_url_libpq_refuses_is_one_line(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADPIPE_POSTGRES_URL", "postgresql://adpipe:s3cret@127.0.0.1:1/ads?bogus=1")
    result = run_cli("stats")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot use the URL of Postgres postgresql://adpipe:***@127.0.0.1:1/ads")
    assert "bogus" in result.stderr and result.stderr.count("\n") == 1
    assert "s3cret" not in result.stderr


_HOLD_ENGINE = """
import sys, time, chdb
connection = chdb.connect(sys.argv[1])
connection.query("SELECT 1")
print("open", flush=True)
time.sleep(60)
"""


def test_an_engine_directory_another_program_holds_is_busy_in_one_line(clean_env: Path) -> None:
    """chDB takes its own lock on its directory; a process other than this home's adpipe (another program, or an
    adpipe reaching the directory through a link) holds it. The engine's error said only that it could not start."""
    engine = clean_env / "engine"
    (clean_env / "link").symlink_to(engine)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_ENGINE, str(engine)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        env = {
            **os.environ,
            "ADPIPE_HOME": str(clean_env / "home"),
            "ADPIPE_CLICKHOUSE_URL": f"chdb://{clean_env}/link",
        }
        done = subprocess.run([sys.executable, "-m", "pipeline", "chstats"], env=env, capture_output=True, text=True)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1
    assert done.stderr == (  # chDB's own line about its lock (`Code: 76 … Cannot lock file`) is not passed on
        f"error: embedded ClickHouse at {engine} is busy: another process holds its data directory (a program other"
        " than adpipe, or an adpipe whose ADPIPE_HOME is elsewhere)\n"
    )


_DAMAGE_ENGINE = """
import pathlib, sys, chdb
connection = chdb.connect(sys.argv[1])
connection.query("CREATE DATABASE adpipe")
connection.query("CREATE TABLE adpipe.t (x UInt8) ENGINE = MergeTree ORDER BY x")
connection.close()
for table in pathlib.Path(sys.argv[1]).rglob("t.sql"):
    table.write_text("not SQL (((")
"""


def test_an_engine_that_does_not_start_says_why_in_one_line(clean_env: Path) -> None:
    """chDB writes the reason to stderr itself and raises only `Error initializing EmbeddedServer`: the one line
    carries the reason."""
    engine = clean_env / "engine"
    damaged = subprocess.run([sys.executable, "-c", _DAMAGE_ENGINE, str(engine)], capture_output=True, text=True)
    assert damaged.returncode == 0, damaged.stderr
    env = {**os.environ, "ADPIPE_HOME": str(clean_env / "home"), "ADPIPE_CLICKHOUSE_URL": f"chdb://{engine}"}
    done = subprocess.run([sys.executable, "-m", "pipeline", "chstats"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: embedded ClickHouse at {engine} did not start: Code: 62. DB::Exception: ")
    assert "Syntax error" in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_an_embedded_postgres_that_does_not_start_is_one_line_and_worth_retrying(clean_env: Path) -> None:
    """pg_ctl's page of output stays out of stderr (`-v` shows it). Transient: a server killed a moment ago leaves
    processes holding its memory, and a follower's next run starts it."""
    home = clean_env / "home"
    env = {**os.environ, "ADPIPE_HOME": str(home)}
    for args in (("stats",), ("down",)):
        done = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    with (home / "postgres" / "postgresql.conf").open("a") as conf:
        conf.write("max_connections = 'many'\n")
    done = subprocess.run([sys.executable, "-m", "pipeline", "stats"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr == f"error: embedded Postgres did not start; see its log at {home / 'postgres' / 'log'}\n"
    with pytest.raises(SourceError) as failed:
        EmbeddedPostgres(home / "postgres").url()
    assert is_transient(failed.value)


def test_an_embedded_postgres_directory_initdb_refuses_is_one_line(clean_env: Path) -> None:
    home = clean_env / "home"
    (home / "postgres").mkdir(parents=True)
    (home / "postgres" / "notes.txt").write_text("not a Postgres data directory\n")
    env = {**os.environ, "ADPIPE_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "pipeline", "stats"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: embedded Postgres could not create its data directory {home / 'postgres'}")
    assert done.stderr.count("\n") == 1, done.stderr
