"""The wheel a user installs works on its own: built from this checkout, installed non-editable into a fresh
virtual environment, run from an empty directory, far from the checkout's `schemas/` and `kpi_sql/`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_html_report import KPIS  # written out by hand from kpi_sql/

ROOT = Path(__file__).resolve().parent.parent
UV = os.environ.get("UV") or shutil.which("uv")
"""`uv run` names its own binary in UV; .ci/run may have installed uv where PATH does not reach."""


def run(*args: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


@pytest.mark.skipif(UV is None, reason="building the wheel needs uv")
def test_the_installed_wheel_runs_the_demo_and_lists_every_kpi(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADPIPE_", "POSTGRES_", "VIRTUAL_ENV"))}
    env["UV_PYTHON"] = sys.executable
    run(UV, "build", "--wheel", "--out-dir", tmp_path / "dist", cwd=ROOT, env=env)
    (wheel,) = (tmp_path / "dist").glob("adpipe-*.whl")
    venv = tmp_path / "venv"
    run(UV, "venv", "--python", sys.executable, venv, cwd=tmp_path, env=env)
    run(UV, "pip", "install", "--python", venv / "bin" / "python", wheel, cwd=tmp_path, env=env)
    empty = tmp_path / "empty"
    empty.mkdir()
    adpipe = venv / "bin" / "adpipe"
    try:
        demo = run(adpipe, "demo", "--yes", cwd=empty, env=env)
        assert "All checks pass." in demo.stdout
        listed = run(adpipe, "kpi", "list", cwd=empty, env=env).stdout
        assert [name for name in KPIS if name in listed] == KPIS
    finally:
        subprocess.run([adpipe, "down"], cwd=empty, env=env, capture_output=True, timeout=120)
