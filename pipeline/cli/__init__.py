"""The `adpipe` command line. Each command parses its options and calls one library function."""

from __future__ import annotations

import sys

from pipeline.cli import source  # noqa: F401  (registers the commands)
from pipeline.cli.app import app, fail
from pipeline.errors import describe_failure


def main() -> None:
    """Entry point: run the app, turning expected failures into one line on stderr and a non-zero exit."""
    try:
        app()
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except Exception as exc:
        message = describe_failure(exc)
        if message is None:
            raise
        fail(message)
    sys.exit(0)
