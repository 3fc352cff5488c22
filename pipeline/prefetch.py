"""Overlapping a producer with its consumer: the next chunk is made in a thread while the current one is used.

Polars, Arrow, the Postgres drivers and chDB release the GIL in their heavy parts, so on two cores the producer
and the consumer really do run at the same time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from queue import Empty, Queue


def prefetch[T](chunks: Iterator[T], name: str = "adpipe-prefetch") -> Iterator[T]:
    """Produce the next chunk in a thread while the caller works on the current one.

    One chunk ahead at most, so memory stays bounded by two chunks. Errors reach the caller.
    """
    queue: Queue[tuple[bool, object]] = Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                queue.put((True, chunk))
            queue.put((False, None))
        except BaseException as exc:
            queue.put((False, exc))

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            more, item = queue.get()
            if not more:
                if isinstance(item, BaseException):
                    raise item
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            with contextlib.suppress(Empty):
                queue.get(timeout=0.1)
        worker.join()
