"""Configuration from the environment (and an optional `.env`), in one place.

Every setting has a default that runs fully embedded: no server, no Docker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from dotenv import load_dotenv

from pipeline.errors import AdpipeError

DEFAULT_CLICKHOUSE_DATABASE = "adpipe"


@dataclass(frozen=True)
class Settings:
    home: Path
    postgres_url: str | None
    """An explicit server URL, or None for the embedded server under `home`."""
    clickhouse_url: str
    clickhouse_database: str
    staging_dir: StagingDir

    @property
    def embedded_postgres_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def clickhouse_is_embedded(self) -> bool:
        return self.clickhouse_url.startswith("chdb:")


def load_settings() -> Settings:
    """Read the settings; variables already in the environment win over `.env`."""
    load_dotenv(Path.cwd() / ".env", override=False)
    home = Path(os.environ.get("ADPIPE_HOME", ".adpipe")).absolute()
    clickhouse_url = os.environ.get("ADPIPE_CLICKHOUSE_URL") or f"chdb://{home / 'clickhouse'}"
    return Settings(
        home=home,
        postgres_url=os.environ.get("ADPIPE_POSTGRES_URL") or _postgres_url_from_seed_variables(),
        clickhouse_url=clickhouse_url,
        clickhouse_database=_clickhouse_database(clickhouse_url),
        staging_dir=parse_staging_dir(os.environ.get("ADPIPE_STAGING_DIR", "staging")),
    )


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
        raise AdpipeError(f"ADPIPE_STAGING_DIR {value!r} names no bucket: expected s3://bucket/prefix")
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
        path = urlsplit(url).path.strip("/")
        if path:
            return path
    return DEFAULT_CLICKHOUSE_DATABASE


def mask_url(url: str) -> str:
    """The URL with its password (in the user info or a `password=` query parameter) replaced by `***`."""
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
