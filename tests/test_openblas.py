"""The `adpipe` command keeps NumPy's OpenBLAS on one thread unless the user says otherwise
(see pipeline/cli/openblas.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The CLI first, then NumPy, as a command that uses it imports it; then the threads the process runs.
SHOW = "import pipeline.cli, numpy, os; print(os.environ['OPENBLAS_NUM_THREADS'], len(os.listdir('/proc/self/task')))"


@pytest.mark.parametrize(("user", "setting", "threads"), [(None, "1", 1), ("2", "2", None)], ids=["unset", "set"])
def test_openblas_starts_no_threads_of_its_own_unless_the_user_asks(
    user: str | None, setting: str, threads: int | None
) -> None:
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_NUM_THREADS"}
    if user is not None:
        env["OPENBLAS_NUM_THREADS"] = user
    # A new process: OpenBLAS reads the variable once, when NumPy is first imported.
    shown = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True).stdout
    seen_setting, seen_threads = shown.split()
    assert seen_setting == setting  # the user's value is kept
    if threads is not None:  # how many threads the user's value starts depends on the machine's cores
        assert int(seen_threads) == threads
