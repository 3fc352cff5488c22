"""The `adpipe` command configures Polars' allocator before Polars starts (see pipeline/cli/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The CLI first, then Polars, as a command that uses it imports it (the CLI itself starts without Polars).
SHOW = "import pipeline.cli, polars, os; print(os.environ['_RJEM_MALLOC_CONF'])"
POLARS = "dirty_decay_ms:500,muzzy_decay_ms:1000"
ADPIPE = "dirty_decay_ms:10000,muzzy_decay_ms:10000"


@pytest.mark.parametrize(
    ("inherited", "seen"),
    [
        (None, f"{POLARS},{ADPIPE}"),
        ("dirty_decay_ms:42", f"{POLARS},{ADPIPE},dirty_decay_ms:42"),  # the user's value comes last: it wins
        (POLARS, f"{POLARS},{ADPIPE}"),  # started by a process that imported Polars: its defaults are not the user's
        (f"{POLARS},thp:always", f"{POLARS},{ADPIPE},thp:always"),
    ],
    ids=["unset", "set by the user", "inherited from Polars", "inherited with an option"],
)
def test_freed_memory_is_kept_unless_the_user_says_otherwise(inherited: str | None, seen: str) -> None:
    env = {key: value for key, value in os.environ.items() if key != "_RJEM_MALLOC_CONF"}
    if inherited is not None:
        env["_RJEM_MALLOC_CONF"] = inherited
    # A new process: the allocator reads its configuration once, when Polars is first imported.
    shown = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True).stdout
    assert shown.strip() == seen
