"""What tests share to wait and to take ports without racing anyone: polls with a deadline, ports that are really free.

- `wait_until`: every poll of the suite goes through it, so none waits forever and each says what it waited for.
- `refused_port`: a port where a connection is refused, held for the test so no other process can listen there.
- `start_on_a_free_port`: for a server that must be told its port number (Postgres), a retry when another process
  took the number first. A server that can bind port 0 itself is started that way instead (the HTTP double, moto)
  and asked for its port: nothing to retry.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace

from pipeline.config import Settings
from pipeline.source.postgres import connect
from pipeline.sync.capture import warehouse_slot


def wait_until[T](predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call `predicate` until it returns something true, and return that; fail after `timeout` seconds.

    `what` names the awaited condition for the failure message ("the standby to replay up to 0/3000148").
    The predicate is always called once more after the deadline, so a slow machine fails only when the
    condition really never held.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@contextmanager
def refused_port() -> Iterator[int]:
    """A port of 127.0.0.1 on which every connection is refused until the block ends.

    The socket is bound and never listens: the kernel answers a connection with a reset (ECONNREFUSED), and
    since the port stays bound, without SO_REUSEADDR, no other process can listen on it meanwhile — unlike a
    port bound, closed and then reused, which anything may take in between.
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


class PortTaken(Exception):
    """Raised by a server's start when its port was already in use: `start_on_a_free_port` tries another."""


def start_on_a_free_port(start: Callable[[int], None], what: str, attempts: int = 5) -> int:
    """Start a server that must be told a port number, and return that number.

    Postgres cannot bind port 0 and report it, nor be handed a bound socket; a Unix-domain socket would not do
    either, as adpipe reaches Postgres over TCP (ConnectorX, ADBC and psycopg alike). So: a port the kernel has
    just shown free, and when another process binds it between that moment and the server's own bind — `start`
    then raises PortTaken — another port. The server's bind is the only check that counts: no number is trusted
    to stay free, a conflict is seen, not guessed at.
    """
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            start(port)
        except PortTaken:
            continue
        return port
    raise AssertionError(f"{what}: {attempts} free ports in a row were taken by another process before it bound them")


def capture_slot(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The replication slot that feeds `settings`' warehouse, named as the sync names it.

    `env`: the environment of the `adpipe` processes that synced, when their engine is not `settings`' own (a test
    that hands an engine of its own to child processes): the slot is that engine's.
    """
    if env is not None:
        settings = replace(settings, clickhouse_url=env["ADPIPE_CLICKHOUSE_URL"])
    with connect(settings, ensure_schema=False) as pg:
        return warehouse_slot(settings, pg.info.dbname)


def adpipe(env: dict[str, str], *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """`adpipe ARGS` in a process of its own, with the environment `env`."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
