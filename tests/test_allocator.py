"""The `adpipe` command configures Polars' allocator before Polars starts (see pipeline/cli/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SHOW = "import pipeline.cli, os; print(os.environ['_RJEM_MALLOC_CONF'])"


@pytest.mark.parametrize(
    ("user_value", "expected_end"),
    [(None, "dirty_decay_ms:10000,muzzy_decay_ms:10000"), ("dirty_decay_ms:42", ",dirty_decay_ms:42")],
)
def test_freed_memory_is_kept_unless_the_user_says_otherwise(user_value: str | None, expected_end: str) -> None:
    env = {key: value for key, value in os.environ.items() if key != "_RJEM_MALLOC_CONF"}
    if user_value is not None:
        env["_RJEM_MALLOC_CONF"] = user_value
    # A new process: the allocator reads its configuration once, when Polars is first imported.
    shown = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True).stdout
    # Polars puts its own defaults first and appends the configuration it finds: the last value of a key wins.
    assert shown.strip().startswith("dirty_decay_ms:500,muzzy_decay_ms:1000,")
    assert shown.strip().endswith(expected_end)
