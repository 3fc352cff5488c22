"""Where staged files live: a local directory or an `s3://bucket/prefix`, behind the few operations staging needs.

Both go through a pyarrow filesystem (`LocalFileSystem` or `S3FileSystem`), so the staging code is the
same for both. Paths are `PurePath`s: a real `Path` locally, `PurePosixPath("bucket/key")` on S3 (the
form pyarrow's S3 filesystem takes). What differs is in `LocalStore`: a local file needs its directory
created first, a local file written whole is written to a temp file, fsync'd and renamed into place (on S3
one upload does that: an object becomes visible only once complete), only a local directory can be renamed
(S3 has no rename: see `pipeline.sync.stage` and `pipeline.referral.staging` for the commit points), and local
I/O errors stay as they were while S3 failures become one-line `StagingError`s naming the object.

S3 settings are the standard AWS variables: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (an S3-compatible
server), `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, `AWS_REGION` or
`AWS_DEFAULT_REGION`. Credentials are passed to pyarrow and to ClickHouse's `s3()`, never logged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.atomic import write_atomic
from pipeline.config import S3_SCHEME, StagingDir
from pipeline.errors import StagingError, first_line


def s3_endpoint() -> str | None:
    """The S3-compatible server to use instead of AWS, from the standard variables."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_credentials() -> tuple[str, str, str | None] | None:
    """(key id, secret, session token) from the environment, or None to let the SDK find them."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    return (key, secret, os.environ.get("AWS_SESSION_TOKEN") or None) if key and secret else None


def s3_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


class Store:
    """A staging directory on S3 (the base class) or local (`LocalStore`)."""

    def __init__(self, fs: pafs.FileSystem, root: PurePath, location: StagingDir) -> None:
        self.fs = fs
        self.root = root
        self.location = location

    @property
    def can_rename(self) -> bool:
        """Whether a directory can be moved into place atomically (locally yes; S3 has no rename)."""
        return False

    def url(self, path: PurePath) -> str:
        """The path as a user writes it: `s3://bucket/key`, or the local path."""
        return f"{S3_SCHEME}{path}"

    def http_url(self, path: PurePath) -> str:
        """The object's HTTP(S) URL, for ClickHouse's `s3()`: path-style on a custom endpoint."""
        endpoint = s3_endpoint()
        if endpoint:
            return f"{endpoint.rstrip('/')}/{path}"
        bucket, _, key = str(path).partition("/")
        region = s3_region()
        host = f"s3.{region}.amazonaws.com" if region else "s3.amazonaws.com"
        return f"https://{bucket}.{host}/{key}"

    def is_file(self, path: PurePath) -> bool:
        with self._errors(path):
            return self.fs.get_file_info(str(path)).type == pafs.FileType.File

    def holding(self, path: PurePath, names: list[str], filename: str) -> list[bool]:
        """For each of `names`, whether the directory `path/name` holds the file `filename`: one call for all (a
        staging area holds a directory per run, and one path object per run cost more than the looks)."""
        base = str(path)
        with self._errors(path):
            infos = self.fs.get_file_info([f"{base}/{name}/{filename}" for name in names])
        return [info.type == pafs.FileType.File for info in infos]

    def subdirectories(self, path: PurePath) -> list[str]:
        """Names of the directories right under `path`, sorted; none if it does not exist."""
        with self._errors(path):
            infos = self.fs.get_file_info(pafs.FileSelector(str(path), allow_not_found=True))
        return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)

    def list_files(self, path: PurePath) -> list[PurePath]:
        """Every file under `path`, at any depth, sorted; none if it does not exist."""
        with self._errors(path):
            infos = self.fs.get_file_info(pafs.FileSelector(str(path), recursive=True, allow_not_found=True))
        return sorted(type(path)(info.path) for info in infos if info.type == pafs.FileType.File)

    def read_bytes(self, path: PurePath) -> bytes:
        with self._errors(path), self.fs.open_input_stream(str(path)) as stream:
            return stream.read()

    def read_parquet(self, path: PurePath, columns: list[str] | None = None) -> pa.Table:
        with self._errors(path):
            return pq.read_table(str(path), columns=columns, filesystem=self.fs)

    def sha256(self, path: PurePath) -> str:
        digest = hashlib.sha256()
        with self._errors(path), self.fs.open_input_stream(str(path)) as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()

    def write_parquet(self, path: PurePath, data: pa.Table, **options: Any) -> None:
        with self._errors(path):
            pq.write_table(data, str(path), filesystem=self.fs, **options)

    def write_bytes(self, path: PurePath, data: bytes) -> None:
        """Write the object whole or not at all: S3 makes an upload visible only once it is complete."""
        with self._errors(path), self.fs.open_output_stream(str(path)) as stream:
            stream.write(data)

    def write_json(self, path: PurePath, data: dict) -> None:
        self.write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    def delete_tree(self, path: PurePath) -> None:
        with self._errors(path):
            self.fs.delete_dir(str(path))

    def rename(self, source: PurePath, target: PurePath) -> None:
        raise NotImplementedError("S3 has no rename")

    @contextmanager
    def _errors(self, path: PurePath) -> Iterator[None]:
        """S3 failures (unreachable endpoint, missing bucket, denied) as one line naming the object."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StagingError(f"S3 staging {self.url(path)}: {first_line(exc)}", transient=True) from None


class LocalStore(Store):
    """A local staging directory: the same operations, plus an atomic rename and fsync'd whole-file writes."""

    @property
    def can_rename(self) -> bool:
        return True

    def url(self, path: PurePath) -> str:
        return str(path)

    def write_parquet(self, path: PurePath, data: pa.Table, **options: Any) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        super().write_parquet(path, data, **options)

    def write_bytes(self, path: PurePath, data: bytes) -> None:
        """A temp file beside `path`, fsync'd and renamed over it: `path` is never seen half written."""
        write_atomic(Path(path), lambda tmp: tmp.write_bytes(data))

    def rename(self, source: PurePath, target: PurePath) -> None:
        Path(source).rename(target)

    @contextmanager
    def _errors(self, path: PurePath) -> Iterator[None]:
        yield


def open_store(location: StagingDir) -> Store:
    """The store for a staging location; on S3, checks once that the bucket is there and reachable."""
    if isinstance(location, Path):
        return LocalStore(pafs.LocalFileSystem(), location, location)
    if any(glob in location.prefix for glob in "*?{}"):
        # ClickHouse's s3() reads these as wildcards in the URL of a part.
        raise StagingError(f"S3 staging {location}: the prefix must not contain * ? {{ or }}")
    credentials = s3_credentials()
    endpoint = s3_endpoint()
    fs = pafs.S3FileSystem(
        access_key=credentials[0] if credentials else None,
        secret_key=credentials[1] if credentials else None,
        session_token=credentials[2] if credentials else None,
        region=s3_region() or "us-east-1",
        endpoint_override=endpoint,
        # Fail in seconds, not minutes, when the endpoint is down; transient errors still get retried.
        connect_timeout=5,
        request_timeout=60,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    )
    store = Store(fs, PurePosixPath(location.bucket, location.prefix), location)
    where = f" at {endpoint}" if endpoint else ""
    try:
        bucket = fs.get_file_info(location.bucket)
    except OSError as exc:
        raise StagingError(f"cannot reach S3 staging {location}{where}: {first_line(exc)}", transient=True) from None
    if bucket.type != pafs.FileType.Directory:
        raise StagingError(f"S3 staging {location}: bucket {location.bucket!r} does not exist{where}")
    return store
