"""Reading the project's `.sql` files: SQL lives in files, Python only runs it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS_DIR = ROOT / "schemas"
KPI_DIR = ROOT / "kpi_sql"

_LINE_COMMENT = re.compile(r"--[^\n]*")


def statements(path: Path) -> list[str]:
    """The statements of a file, split on `;`, comments removed.

    Our schema files keep `;` and `--` out of string literals, which this simple split relies on.
    """
    text = _LINE_COMMENT.sub("", path.read_text())
    return [stmt.strip() for stmt in text.split(";") if stmt.strip()]
