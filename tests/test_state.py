"""Atomic writes: the result, the mode it gets, and one clear line for a place that cannot be written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline.atomic import write_atomic
from pipeline.errors import AdpipeError


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_file_gets_the_mode_the_umask_gives(tmp_path: Path, umask: int, mode: int) -> None:
    target = tmp_path / "sub" / "report.html"
    previous = os.umask(umask)
    try:
        write_atomic(target, lambda tmp: tmp.write_text("<p>hello</p>"))
    finally:
        os.umask(previous)
    assert target.read_text() == "<p>hello</p>"
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temp file left


def test_a_directory_in_the_way_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(AdpipeError, match=r"^cannot write .*out: "):
        write_atomic(tmp_path / "out", lambda tmp: tmp.write_text("x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
