"""Finding and reading the project's `.sql` files: SQL lives in files, Python only runs it.

The repository keeps its SQL at the top level (`schemas/`, `kpi_sql/`); the wheel ships the same
directories inside the package, at `pipeline/_sql/` (pyproject.toml, `force-include`). This is the
one place that knows both: every module asks `sql_dir()` or `sql_file()`.
"""

from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

_LINE_COMMENT = re.compile(r"--[^\n]*")


def _resource(*parts: str) -> Traversable:
    """`schemas/…` and `kpi_sql/…` from the project's SQL root; `referral/…` from the referral package's `sql/`."""
    head, *rest = parts
    if head == "referral":
        return files("pipeline.referral").joinpath("sql", *rest)
    shipped = files("pipeline") / "_sql"  # an installed wheel
    root = shipped if shipped.is_dir() else files("pipeline") / ".."  # a checkout (editable install)
    return root.joinpath(head, *rest)


def sql_dir(*parts: str) -> Traversable:
    """A directory of SQL: `sql_dir("schemas", "clickhouse")`, `sql_dir("kpi_sql")`."""
    directory = _resource(*parts)
    if not directory.is_dir():
        raise FileNotFoundError(f"adpipe's SQL directory {'/'.join(parts)} is missing from this installation")
    return directory


def sql_files(*parts: str, pattern: str = "*.sql") -> list[Traversable]:
    """The files of `sql_dir(*parts)` whose names match `pattern`, sorted by name."""
    return sorted((f for f in sql_dir(*parts).iterdir() if Path(f.name).match(pattern)), key=lambda f: f.name)


def sql_text(*parts: str) -> str:
    """The text of one file: `sql_text("schemas", "postgres", "V1__create_schema.sql")`, `sql_text("referral", …)`."""
    return _resource(*parts).read_text()


def statements(text: str) -> list[str]:
    """The statements of a SQL text, split on `;`, comments removed.

    Our schema files keep `;` and `--` out of string literals, which this simple split relies on.
    """
    text = _LINE_COMMENT.sub("", text)
    return [stmt.strip() for stmt in text.split(";") if stmt.strip()]
