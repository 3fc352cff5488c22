"""A test double for the TRANSPORT of a ClickHouse server: ClickHouse's HTTP interface over the real engine.

No ClickHouse server can run on the test machine, but adpipe's server mode is HTTP. This module serves
ClickHouse's HTTP interface on 127.0.0.1 (a thread, a free port) and runs every statement in the real
ClickHouse engine of the test process — chDB, on the session's data directory (tests/conftest.py), through
`chdb.connect(...).query(sql, format, params=...)`. Only the HTTP layer is reimplemented, and only what
clickhouse-connect uses:

- the query in the `query=` URL parameter, in the body, or both (the body then follows the URL part after a
  line feed, as the server reads it); insert data in the body after `INSERT … FORMAT <fmt>` (in the URL, or
  on the body's first line), run as `INSERT … FROM INFILE` because chDB reads input data from a file;
- `database`, `session_id` (a session keeps its chDB handle, so `SET` and temporary tables last; concurrent
  use of one session is refused with code 373 like the server), `default_format`, `query_id`, `param_<name>`
  server-side query parameters, and every other URL parameter as a setting for that request (in a session,
  reset to its default afterwards rather than to the session's value);
- any output and input format the engine knows (Native, Arrow, Parquet, TabSeparated…), `X-ClickHouse-Format`
  for a statement that returns a result, `X-ClickHouse-Summary`, `X-ClickHouse-Query-Id`,
  `X-ClickHouse-Timezone`;
- request bodies with `Content-Encoding` lz4 (frame), zstd, gzip or deflate; responses compressed with the
  first of those the client accepts when `enable_http_compression=1`; chunked request bodies; keep-alive;
- HTTP basic auth, `X-ClickHouse-User`/`X-ClickHouse-Key` or `user`/`password` URL parameters, for one
  configured user; a wrong name or password fails with code 516 (AUTHENTICATION_FAILED), status 403;
- errors as the server sends them: `X-ClickHouse-Exception-Code`, the engine's `Code: N. DB::Exception: …`
  text, and the status ClickHouse maps the code to (404 unknown table or database, 400 syntax or type
  errors, 500 otherwise — src/Server/HTTP/exceptionCodeToHTTPStatus.cpp);
- `GET /ping`.

It is not a server: no users, grants, quotas or clusters beyond that, no ClickHouse-native `compress=1`
blocks, no progress headers. `inject` makes the next requests fail — a 503 from "a proxy", a connection
reset after the statement ran, a transient ClickHouse error, a slow answer — and `requests` records every
statement received, so tests can count what was sent and resent.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import socket
import struct
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import chdb
import lz4.frame

try:
    from compression import zstd  # Python 3.14
except ImportError:
    from backports import zstd  # before 3.14, a dependency of clickhouse-connect

_NOT_SETTINGS = {
    "query", "database", "default_format", "session_id", "session_timeout", "session_check", "close_session",
    "query_id", "compress", "decompress", "user", "password", "quota_key", "buffer_size", "wait_end_of_query",
    "client_protocol_version", "role", "stacktrace",
}  # fmt: skip
"""URL parameters the server reads itself (HTTPHandler's reserved names); any other is a setting."""

_STATUS_BY_CODE = {
    **dict.fromkeys((192, 193, 497, 512, 516), 403),  # unknown user, wrong password, access denied, auth failed
    194: 401,  # REQUIRED_PASSWORD
    **dict.fromkeys((6, 15, 25, 26, 27, 36, 37, 38, 41, 44, 53, 62, 72, 117, 123, 167, 168, 223, 321, 376, 427), 400),
    **dict.fromkeys((46, 47, 50, 56, 60, 63, 73, 78, 81, 115, 152, 336, 511), 404),
    8: 400,  # THERE_IS_NO_COLUMN
    229: 413,  # QUERY_IS_TOO_LARGE
    48: 501,  # NOT_IMPLEMENTED
    **dict.fromkeys((76, 209, 439), 503),  # CANNOT_OPEN_FILE, SOCKET_TIMEOUT, CANNOT_SCHEDULE_TASK
    159: 408,  # TIMEOUT_EXCEEDED
}
"""ClickHouse's mapping of exception codes to HTTP statuses; every other code is 500."""

_INSERT_WITH_DATA = re.compile(
    rb"\s*(INSERT\s+INTO\s+.+?)\s+FORMAT\s+(\w+)[ \t]*(?:\r?\n|$)", re.IGNORECASE | re.DOTALL
)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_CODE = re.compile(r"Code: (\d+)\.")

_DECOMPRESS = {
    "lz4": lz4.frame.decompress,
    "zstd": zstd.decompress,
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
}
_COMPRESS = {
    "lz4": lz4.frame.compress,
    "zstd": zstd.compress,
    "gzip": gzip.compress,
    "deflate": zlib.compress,
}


class Fault(Enum):
    UNAVAILABLE = "503 from a proxy: the statement does not reach the engine"
    RESET = "the statement runs, then the connection is reset before the response"
    TOO_MANY_PARTS = "ClickHouse code 252: the statement is refused"
    SLOW = "the answer comes after `delay` seconds"


@dataclass
class _Injection:
    fault: Fault
    times: int
    matching: re.Pattern[str] | None
    delay: float


@dataclass
class Request:
    statement: str
    """The statement's text (the SQL without insert data), as received."""
    fault: Fault | None = None


@dataclass
class ClickHouseHttp:
    """ClickHouse's HTTP interface for `data_dir`'s engine on 127.0.0.1; start with `running()`."""

    data_dir: str
    user: str = "adpipe"
    password: str = "s3cret pass"
    requests: list[Request] = field(default_factory=list)
    _injections: list[_Injection] = field(default_factory=list)
    _sessions: dict[str, tuple[Any, threading.Lock]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _anchor: Any = None
    _version: str = ""
    _timezone: str = ""

    @property
    def port(self) -> int:
        assert self._server is not None, "not running"
        return self._server.server_address[1]

    def url(self, password: str | None = None, database: str = "") -> str:
        """`http://user:password@127.0.0.1:port/database`, the password URL-quoted."""
        secret = quote(self.password if password is None else password, safe="")
        return f"http://{self.user}:{secret}@127.0.0.1:{self.port}/{database}"

    @contextmanager
    def running(self, ssl_context: Any = None) -> Iterator[ClickHouseHttp]:
        """Serve until the block ends; `ssl_context` (server side) serves https instead."""
        # A handle held for the server's lifetime keeps the engine open between requests.
        self._anchor = chdb.connect(self._connection_string())
        version = self._anchor.query("SELECT version(), timezone()", "TabSeparated").bytes().decode()
        self._version, self._timezone = version.strip().split("\t")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        thread = threading.Thread(target=self._server.serve_forever, name="clickhouse-http", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join()
            for handle, _ in self._sessions.values():
                handle.close()
            self._sessions.clear()
            self._anchor.close()

    def inject(self, fault: Fault, times: int = 1, matching: str | None = None, delay: float = 0.0) -> None:
        """Make the next `times` requests (whose statement matches the regex `matching`, if given) fail with `fault`."""
        pattern = re.compile(matching, re.IGNORECASE | re.DOTALL) if matching else None
        with self._lock:
            self._injections.append(_Injection(fault, times, pattern, delay))

    def pending_faults(self) -> int:
        with self._lock:
            return sum(injection.times for injection in self._injections)

    def statements(self, matching: str) -> list[Request]:
        """The requests received whose statement matches the regex `matching`."""
        pattern = re.compile(matching, re.IGNORECASE | re.DOTALL)
        return [request for request in self.requests if pattern.search(request.statement)]

    def _connection_string(self) -> str:
        # The same spelling as clickhouse-connect's chdb driver: chDB compares engine paths literally.
        return os.path.realpath(self.data_dir)

    def _take_fault(self, statement: str) -> _Injection | None:
        with self._lock:
            for injection in self._injections:
                if injection.matching is None or injection.matching.search(statement):
                    injection.times -= 1
                    if injection.times == 0:
                        self._injections.remove(injection)
                    return injection
        return None

    @contextmanager
    def _handle(self, session_id: str | None) -> Iterator[Any]:
        """A chDB handle: the session's (locked while in use), or a fresh one for a request without a session."""
        if not session_id:
            handle = chdb.connect(self._connection_string())
            try:
                yield handle
            finally:
                handle.close()
            return
        with self._lock:
            if session_id not in self._sessions:
                self._sessions[session_id] = (chdb.connect(self._connection_string()), threading.Lock())
            handle, in_use = self._sessions[session_id]
        if not in_use.acquire(blocking=False):
            raise _ClickHouseError(373, f"Session {session_id} is locked by a concurrent client. (SESSION_IS_LOCKED)")
        try:
            yield handle
        finally:
            in_use.release()


class _ClickHouseError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(f"Code: {code}. DB::Exception: {message}")
        self.code = code


@dataclass
class _Response:
    body: bytes
    headers: dict[str, str]


def _handler(server: ClickHouseHttp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as clickhouse-connect pools connections

        def setup(self) -> None:
            super().setup()
            # Headers and body are separate writes: without this, Nagle's algorithm holds the body back ~40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are recorded in `server.requests`; the console stays quiet

        def do_GET(self) -> None:
            if urlsplit(self.path).path.rstrip("/").endswith("/ping"):
                self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            else:
                self._serve(b"")

        def do_POST(self) -> None:
            self._serve(self._read_body())

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                body = b"".join(chunks)
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            encoding = self.headers.get("Content-Encoding", "").lower()
            return _DECOMPRESS[encoding](body) if encoding in _DECOMPRESS else body

        def _serve(self, body: bytes) -> None:
            params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
            statement, data = _split_statement(params.get("query", ""), body)
            request = Request(statement)
            server.requests.append(request)
            query_id = params.get("query_id") or str(uuid.uuid4())
            try:
                self._authenticate(params)
                injection = server._take_fault(statement)
                request.fault = injection.fault if injection else None
                if injection and injection.fault is Fault.UNAVAILABLE:
                    self._send(503, b"Service Unavailable\n", {"Content-Type": "text/plain"})
                    return
                if injection and injection.fault is Fault.TOO_MANY_PARTS:
                    raise _ClickHouseError(
                        252,
                        "Too many parts (3000 with average size of 1.00 MiB) in table. Merges are processing "
                        "significantly slower than inserts. (TOO_MANY_PARTS)",
                    )
                if injection and injection.fault is Fault.SLOW:
                    time.sleep(injection.delay)
                response = _execute(server, params, statement, data)
                if injection and injection.fault is Fault.RESET:
                    self._reset()
                    return
            except _ClickHouseError as exc:
                message = f"{exc} (version {server._version})\n".encode()
                headers = {"X-ClickHouse-Exception-Code": str(exc.code), "Content-Type": "text/plain; charset=UTF-8"}
                self._send(_STATUS_BY_CODE.get(exc.code, 500), message, {**headers, "X-ClickHouse-Query-Id": query_id})
                return
            response.headers["X-ClickHouse-Query-Id"] = query_id
            response.headers["X-ClickHouse-Timezone"] = server._timezone
            self._send(200, *self._compressed(params, response))

        def _authenticate(self, params: dict[str, str]) -> None:
            user, password = params.get("user", "default"), params.get("password", "")
            if self.headers.get("X-ClickHouse-User"):
                user, password = self.headers["X-ClickHouse-User"], self.headers.get("X-ClickHouse-Key", "")
            authorization = self.headers.get("Authorization", "")
            if authorization.startswith("Basic "):
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if (user, password) != (server.user, server.password):
                raise _ClickHouseError(
                    516,
                    f"{user}: Authentication failed: password is incorrect, or there is no user with such name. "
                    "(AUTHENTICATION_FAILED)",
                )

        def _compressed(self, params: dict[str, str], response: _Response) -> tuple[bytes, dict[str, str]]:
            if params.get("enable_http_compression") != "1":
                return response.body, response.headers
            accepted = [name.strip().lower() for name in self.headers.get("Accept-Encoding", "").split(",")]
            for name in accepted:
                if name in _COMPRESS:
                    return _COMPRESS[name](response.body), {**response.headers, "Content-Encoding": name}
            return response.body, response.headers

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (a read timeout, a killed process)

        def _reset(self) -> None:
            """Drop the connection with a TCP reset, as a crashed server or a broken network would."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True

    return Handler


def _split_statement(url_query: str, body: bytes) -> tuple[str, bytes | None]:
    """The statement and, for `INSERT … FORMAT <fmt>` followed by data, the data."""
    text = (url_query + "\n").encode() + body if url_query else body
    match = _INSERT_WITH_DATA.match(text)
    if match is None:
        return text.decode(), None
    head = f"{match[1].decode()} FORMAT {match[2].decode()}"
    return head, text[match.end() :]


def _execute(server: ClickHouseHttp, params: dict[str, str], statement: str, data: bytes | None) -> _Response:
    query_params = {name[6:]: value for name, value in params.items() if name.startswith("param_")}
    settings = {
        name: value for name, value in params.items() if name not in _NOT_SETTINGS and not name.startswith("param_")
    }
    with server._handle(params.get("session_id")) as handle:
        try:
            if params.get("database"):
                handle.query(f"USE {_identifier(params['database'])}", "TabSeparated")
            if settings:
                assignments = ", ".join(f"{_identifier(name)} = {_string(value)}" for name, value in settings.items())
                handle.query(f"SET {assignments}", "TabSeparated")
            if data is not None:
                return _insert(handle, statement, data)
            return _query(handle, statement, params.get("default_format", "TabSeparated"), query_params)
        except _ClickHouseError:
            raise
        except Exception as exc:  # chDB raises its own error type with the server's message
            message = str(exc).strip()
            code = _CODE.match(message)
            raise _ClickHouseError(int(code[1]) if code else 1002, message.split("DB::Exception: ", 1)[-1]) from None
        finally:
            if params.get("session_id") and settings:  # URL settings last one request, not the session
                handle.query(f"SET {', '.join(f'{_identifier(name)} = DEFAULT' for name in settings)}", "TabSeparated")


def _insert(handle: Any, statement: str, data: bytes) -> _Response:
    match = _INSERT_WITH_DATA.match(statement.encode())
    assert match is not None
    with tempfile.NamedTemporaryFile(suffix=".insert") as file:
        file.write(data)
        file.flush()
        sql = f"{match[1].decode()} FROM INFILE {_string(file.name)} FORMAT {match[2].decode()}"
        result = handle.query(sql, "TabSeparated")
    rows = str(result.rows_read())
    summary = {"read_rows": rows, "read_bytes": str(len(data)), "written_rows": rows, "written_bytes": str(len(data))}
    return _Response(b"", _summary_headers(summary, result))


def _query(handle: Any, statement: str, default_format: str, query_params: dict[str, str]) -> _Response:
    embedded = _TRAILING_FORMAT.search(statement)
    if embedded:
        result = handle.query(statement, embedded[1], params=query_params)
        body, fmt = result.bytes() or b"", embedded[1]
    elif default_format in ("TabSeparated", "TSV"):
        # A statement that returns a result says so (X-ClickHouse-Format) even with no rows: with names, such a
        # statement always writes at least the names line, and one that returns nothing writes nothing.
        result = handle.query(statement, "TabSeparatedWithNames", params=query_params)
        named = result.bytes() or b""
        body, fmt = named.partition(b"\n")[2], ("TabSeparated" if named else None)
    else:
        result = handle.query(statement, default_format, params=query_params)
        body = result.bytes() or b""
        fmt = default_format if body else None
    summary = {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()), "written_rows": "0"}
    headers = _summary_headers(summary, result)
    if fmt is not None:
        headers["X-ClickHouse-Format"] = fmt
    return _Response(body, headers)


def _summary_headers(summary: dict[str, str], result: Any) -> dict[str, str]:
    summary = {**summary, "elapsed_ns": str(int(result.elapsed() * 1e9))}
    return {
        "X-ClickHouse-Summary": json.dumps(summary),
        "Content-Type": "application/octet-stream",
    }


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
