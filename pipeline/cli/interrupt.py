"""Ctrl-C in an `adpipe` command: noticed wherever the main thread waits, and known afterwards, whatever error it
surfaced as. Set up when the command starts, before Polars is imported.

Two things stand in the way without it:

- Importing Polars installs a SIGINT handler of its own over Python's (pola-rs/polars#21739). It passes the signal
  on to Python's, but it is installed with SA_RESTART: a main thread blocked on a lock (a sync waiting for its source
  to open, or for a part to load) goes back to waiting, and the KeyboardInterrupt is raised only when that wait ends,
  up to minutes later. So as Polars is imported, on whichever thread, Python's handler is put back as it was.
  Polars then no longer stops a computation of its own on Ctrl-C; adpipe's are a chunk each, and the interrupt is
  raised when it returns.
- An interrupt does not always arrive as a KeyboardInterrupt: one raised while a C extension initializes comes back
  as an ImportError, and a read it cancelled on the server as the driver's error. `interrupted()` tells the command
  line's error handling that the user asked to stop, so it reports that rather than the error it took. And one
  raised in a weakref callback is dropped by Python: the signal is then sent again.
"""

from __future__ import annotations

import _thread
import ctypes
import importlib.machinery
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType, ModuleType
from typing import Any

_received = threading.Event()

# `struct sigaction` is copied out and back whole, never read: a buffer larger than any libc's struct does.
_SIGACTION_BYTES = 256


def interrupted() -> bool:
    """Whether this process got a SIGINT that raised KeyboardInterrupt."""
    return _received.is_set()


def clear_unhandled_mark() -> None:
    """Before exiting with 130 after a KeyboardInterrupt was caught: an `exec` that ends normally. CPython 3.12 marks
    a KeyboardInterrupt that ended code run by `exec` of a string (dataclasses make their methods so, when a module
    defining one is imported) as unhandled even once caught, and under `python -m` the process would then end by
    SIGINT instead of with the code asked for."""
    exec("")


def _on_sigint(_signum: int, _frame: FrameType | None) -> None:
    _received.set()
    raise KeyboardInterrupt


def _on_unraisable(unraisable: Any) -> None:
    """A KeyboardInterrupt raised where Python cannot raise it, in a weakref callback or a destructor (imports run
    some), is printed and dropped, and the main thread then waits on as if Ctrl-C had not been pressed. The signal is
    sent again instead, to the main thread (sent to the process, it may go to the thread sending it, and Python only
    notes it there), for it to raise where it can: from a new thread, which runs once this one has moved on (it needs
    the interpreter this one holds), and started without waiting for it, as `threading.Thread.start` would, a wait
    the signal would interrupt right here."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        if not sys.is_finalizing():  # else the command is over: there is nothing left to interrupt
            _thread.start_new_thread(signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
        return
    sys.__unraisablehook__(unraisable)


class _PythonsHandlerBack:
    """Puts back the SIGINT handler that was installed when this was made."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None)
        self._pythons = ctypes.create_string_buffer(_SIGACTION_BYTES)
        self.saved = self._libc.sigaction(signal.SIGINT, None, self._pythons) == 0

    def __call__(self) -> None:
        # sigaction, not signal.signal: the import may run on any thread, and signal.signal only on the main one.
        self._libc.sigaction(signal.SIGINT, self._pythons, None)


class _LoaderThenHandlerBack:
    """Polars' own loader, which then puts Python's SIGINT handler back for good."""

    def __init__(self, loader: Any, done: Callable[[], None]) -> None:
        self._loader = loader
        self._done = done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            self._loader.exec_module(module)
        finally:
            self._done()


class _WhilePolarsImports:
    """Finds nothing itself. Polars installs its handler part way through its import: each module Polars imports
    next puts Python's back, so the signal is Polars' for a few microseconds at most; the end of the import puts it
    back once more, and this finder leaves."""

    def __init__(self, handler_back: _PythonsHandlerBack) -> None:
        self._handler_back = handler_back

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.startswith("polars."):
            self._handler_back()
        if fullname != "polars":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderThenHandlerBack(spec.loader, self._leave)
        return spec

    def _leave(self) -> None:
        self._handler_back()
        sys.meta_path.remove(self)


def _set_up() -> None:
    # A SIGINT the command was started ignoring (`nohup`, a background job) stays ignored.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
        sys.unraisablehook = _on_unraisable
    if os.name != "posix" or "polars" in sys.modules:
        return
    handler_back = _PythonsHandlerBack()
    if handler_back.saved:
        sys.meta_path.insert(0, _WhilePolarsImports(handler_back))


_set_up()
