"""Configuration from the environment (and an optional `.env`), in one place.

Every setting has a default that runs fully embedded: no server, no Docker.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from dotenv import load_dotenv
from dotenv.parser import parse_stream

from pipeline.errors import ConfigError

DEFAULT_CLICKHOUSE_DATABASE = "adpipe"


@dataclass(frozen=True)
class Settings:
    home: Path
    postgres_url: str | None
    """An explicit server URL, or None for the embedded server under `home`."""
    postgres_replica_url: str | None
    """A hot standby of that server the sync extracts from (`ADPIPE_POSTGRES_REPLICA_URL`), or None: the primary."""
    clickhouse_url: str
    clickhouse_database: str
    staging_dir: StagingDir

    clickhouse_server: ClickHouseServerOptions
    """Timeouts, retries and TLS for a ClickHouse server (unused by the embedded engine)."""

    # Read-only warehouse access: ADPIPE_CLICKHOUSE_READER_URL, for the commands that only read ClickHouse.
    clickhouse_reader_url: str | None = None
    """A server URL for a user with SELECT only; None: the commands read with clickhouse_url."""

    change_capture: bool = True
    """`ADPIPE_CHANGE_CAPTURE`: read fact updates and deletes from a logical replication slot where the server
    allows it (docs/change-capture.md); false: never create or read a slot (the fallback checks run instead)."""
    capture_wait_seconds: float = 30.0
    """`ADPIPE_CAPTURE_WAIT_SECONDS`: how long a full sync waits, creating the slot, for transactions already
    running to end (Postgres needs them finished to start decoding); past it, the run goes on without capture."""
    capture_lag_warning_bytes: int = 1 << 30
    """`ADPIPE_CAPTURE_LAG_WARNING_BYTES`: `status` warns when the slot retains more WAL than this."""
    engine_wait_seconds: float = 60.0
    """`ADPIPE_ENGINE_WAIT_SECONDS`: while `sync --follow` runs, how long another command waits for it to hand over
    the embedded ClickHouse (docs/follow.md); without a follower, a busy engine fails at once."""

    def for_reading(self) -> Settings:
        """These settings with the reader URL as the warehouse URL (the same database)."""
        return replace(self, clickhouse_url=self.clickhouse_reader_url or self.clickhouse_url)

    @property
    def embedded_postgres_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def clickhouse_is_embedded(self) -> bool:
        return self.clickhouse_url.startswith("chdb:")


def load_settings() -> Settings:
    """Read the settings; variables already in the environment win over `.env`.

    The CLI calls this once per command and passes the result down: nothing below it reads the environment.
    """
    _load_env_file(Path.cwd() / ".env")
    home = Path(os.environ.get("ADPIPE_HOME", ".adpipe")).absolute()
    clickhouse_url = _url("ADPIPE_CLICKHOUSE_URL", _CLICKHOUSE_SCHEMES) or f"chdb://{home / 'clickhouse'}"
    return Settings(
        home=home,
        postgres_url=_url("ADPIPE_POSTGRES_URL", _POSTGRES_SCHEMES) or _postgres_url_from_seed_variables(),
        postgres_replica_url=_url("ADPIPE_POSTGRES_REPLICA_URL", _POSTGRES_SCHEMES),
        clickhouse_url=clickhouse_url,
        clickhouse_database=_clickhouse_database(clickhouse_url),
        staging_dir=parse_staging_dir(os.environ.get("ADPIPE_STAGING_DIR", "staging")),
        clickhouse_server=clickhouse_server_options(),
        clickhouse_reader_url=_url("ADPIPE_CLICKHOUSE_READER_URL", _CLICKHOUSE_SCHEMES),
        change_capture=_boolean("ADPIPE_CHANGE_CAPTURE", default=True),
        capture_wait_seconds=_number("ADPIPE_CAPTURE_WAIT_SECONDS", 30.0, minimum=0),
        capture_lag_warning_bytes=_whole("ADPIPE_CAPTURE_LAG_WARNING_BYTES", 1 << 30, minimum=0),
        engine_wait_seconds=_number("ADPIPE_ENGINE_WAIT_SECONDS", 60.0, minimum=0),
    )


def _load_env_file(path: Path) -> None:
    """Set the variables of `.env` not already set. A line that is not `NAME=value` stops the command: skipped, as
    python-dotenv would skip it, a setting with an unclosed quote would leave the embedded default in its place."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as stream:
        broken = [binding.original.line for binding in parse_stream(stream) if binding.error]
    if broken:
        raise ConfigError(f"{path}: line {broken[0]} is not NAME=value (an unclosed quote?)")
    load_dotenv(path, override=False)


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_CLICKHOUSE_SCHEMES = ("chdb://", "http://", "https://")


def _url(name: str, schemes: tuple[str, ...]) -> str | None:
    """The URL in variable `name` (None when unset or empty), refused in one line unless it has one of `schemes`.

    The value itself is not repeated: a connection string that is not a URL (`host=… password=…`) would show its
    password, which only a URL's masking hides."""
    value = os.environ.get(name) or None
    if value is None:
        return None
    if not value.lower().startswith(schemes):
        raise ConfigError(f"{name} must be a URL starting with {' or '.join(schemes)}")
    if value.lower().startswith(("http://", "https://")):
        _check_server_url(name, value)
    return value


def _check_server_url(name: str, url: str) -> None:
    """What the ClickHouse driver would otherwise fail on with a traceback (libpq checks a Postgres URL itself)."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (parsing it is the check)
    except ValueError:
        # Most often a password with a character a URL reserves: the host part then ends at it.
        raise ConfigError(
            f"{name} has no valid port: a user or password holding / ? # @ or : must write them percent-encoded"
            " (%2F %3F %23 %40 %3A)"
        ) from None
    if {parameter.partition("=")[0].lower() for parameter in parts.query.split("&")} & {"user", "password"}:
        raise ConfigError(f"{name}: give the user and password before the host (http://user:password@host:8123/db)")


S3_SCHEME = "s3://"


@dataclass(frozen=True)
class S3Prefix:
    """`ADPIPE_STAGING_DIR=s3://bucket/prefix`: staging on object storage (see `pipeline.storage`)."""

    bucket: str
    prefix: str
    """Without leading or trailing slashes; empty for the bucket's root."""

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{S3_SCHEME}{self.bucket}"


type StagingDir = Path | S3Prefix


def parse_staging_dir(value: str) -> StagingDir:
    """An `s3://bucket/prefix` URL, or a local directory (made absolute)."""
    if not value.startswith(S3_SCHEME):
        return Path(value).absolute()
    bucket, _, prefix = value.removeprefix(S3_SCHEME).partition("/")
    if not bucket:
        raise ConfigError(f"ADPIPE_STAGING_DIR {value!r} names no bucket: expected s3://bucket/prefix")
    return S3Prefix(bucket, prefix.strip("/"))


def _postgres_url_from_seed_variables() -> str | None:
    """The seed project configured Postgres with POSTGRES_HOST/PORT/DB/USER/PASSWORD."""
    host = os.environ.get("POSTGRES_HOST")
    if not host:
        return None
    user = quote(os.environ.get("POSTGRES_USER", "postgres"), safe="")
    password = os.environ.get("POSTGRES_PASSWORD")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    port = os.environ.get("POSTGRES_PORT", "5432")
    database = os.environ.get("POSTGRES_DB", "postgres")
    return f"postgresql://{auth}@{host}:{port}/{database}"


def _clickhouse_database(url: str) -> str:
    """`ADPIPE_CLICKHOUSE_DATABASE`, else the database in a server URL's path, else `adpipe`."""
    explicit = os.environ.get("ADPIPE_CLICKHOUSE_DATABASE")
    if explicit:
        return explicit
    if not url.startswith("chdb:"):
        path = unquote(urlsplit(url).path.strip("/"))  # percent-decoded, as the URL's user and password are
        if path:
            return path
    return DEFAULT_CLICKHOUSE_DATABASE


def mask_url(url: str) -> str:
    """The URL with its password (in the user info or a `password=` query parameter) replaced by `***`."""
    scheme, separator, rest = url.partition("://")
    if separator and "@" in rest and "@" not in urlsplit(url).netloc:
        # A user or password with a reserved character that is not percent-encoded (`a:b/c@host`) ends the URL's
        # host part early, where its parser finds no password: hide everything before the last `@`.
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    parts = urlsplit(url)
    masked = parts
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        masked = masked._replace(netloc=f"{parts.username or ''}:***@{host}")
    if parts.query:
        masked = masked._replace(query="&".join(_mask_parameter(p) for p in parts.query.split("&")))
    # Rebuilding can normalise a URL (an empty `?`, say): return the original when nothing was hidden.
    return url if masked == parts else urlunsplit(masked)


def _mask_parameter(parameter: str) -> str:
    name, equals, _ = parameter.partition("=")
    return f"{name}=***" if equals and name.lower() == "password" else parameter


# --- ClickHouse server connections (http:// and https:// URLs only; the embedded engine needs none of this) ---

DEFAULT_CONNECT_TIMEOUT = 10
DEFAULT_READ_TIMEOUT = 300
DEFAULT_RETRIES = 4
DEFAULT_RETRY_DELAY = 0.5


@dataclass(frozen=True)
class ClickHouseServerOptions:
    """How adpipe talks to a ClickHouse server: timeouts, retries, TLS."""

    connect_timeout: int
    """Seconds to establish a TCP (and TLS) connection (whole seconds: clickhouse-connect rounds down)."""
    read_timeout: int
    """Seconds to wait for the server between bytes of a response: the longest silence adpipe waits through."""
    retries: int
    """Extra attempts after a transient failure (0 turns retrying off)."""
    retry_delay: float
    """Seconds before the first retry; doubled before each next one."""
    verify: bool
    """Verify the server's TLS certificate (https only)."""
    ca_cert: str | None
    """A PEM file of CA certificates to verify the server with, or `certifi`; None: the system's."""
    client_cert: str | None
    """A client certificate (PEM): mutual TLS, and ClickHouse then authenticates the user by it."""
    client_key: str | None


def clickhouse_server_options() -> ClickHouseServerOptions:
    """The ADPIPE_CLICKHOUSE_* connection variables; a malformed value is an AdpipeError naming it."""
    return ClickHouseServerOptions(
        connect_timeout=_whole("ADPIPE_CLICKHOUSE_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT, minimum=1),
        read_timeout=_whole("ADPIPE_CLICKHOUSE_READ_TIMEOUT", DEFAULT_READ_TIMEOUT, minimum=1),
        retries=_whole("ADPIPE_CLICKHOUSE_RETRIES", DEFAULT_RETRIES, minimum=0),
        retry_delay=_number("ADPIPE_CLICKHOUSE_RETRY_DELAY", DEFAULT_RETRY_DELAY, minimum=0),
        verify=_boolean("ADPIPE_CLICKHOUSE_VERIFY", default=True),
        ca_cert=_existing_file("ADPIPE_CLICKHOUSE_CA_CERT", allow="certifi"),
        client_cert=_existing_file("ADPIPE_CLICKHOUSE_CLIENT_CERT"),
        client_key=_existing_file("ADPIPE_CLICKHOUSE_CLIENT_KEY"),
    )


def _number(name: str, default: float, *, minimum: float, integer: bool = False) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= minimum):
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name} must be {kind} of at least {minimum:g}, got {raw!r}")
    return value


def _whole(name: str, default: int, *, minimum: int) -> int:
    return int(_number(name, default, minimum=minimum, integer=True))


def _boolean(name: str, *, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _existing_file(name: str, allow: str | None = None) -> str | None:
    """A path to a file that exists, or the one other word `allow`ed."""
    raw = os.environ.get(name, "").strip()
    if not raw or raw == allow:
        return raw or None
    if not Path(raw).is_file():
        raise ConfigError(f"{name}: no such file {raw}")
    return raw
