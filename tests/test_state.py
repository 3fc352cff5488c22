"""Atomic writes (the result, its mode, one clear line for a place that cannot be written) and the state file."""

from __future__ import annotations

import json
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


def test_a_state_file_of_a_newer_format_is_refused_in_one_line(tmp_path: Path) -> None:
    """Written by a newer adpipe: refused (not misread, not called corrupt), and left as it was."""
    from pipeline.sync.state import STATE_FILE, STATE_FORMAT, load_state

    path = tmp_path / STATE_FILE
    text = json.dumps({"format": STATE_FORMAT + 1, "last_run_id": "20991231T000000000000Z-full", "facts": {}})
    path.write_text(text)
    with pytest.raises(
        AdpipeError, match=rf"^{path} has state format {STATE_FORMAT + 1}, newer than .*: upgrade adpipe$"
    ):
        load_state(tmp_path)
    assert path.read_text() == text


def test_the_state_file_round_trips_with_its_format_and_quarantine_counts(tmp_path: Path) -> None:
    from pipeline.sync.state import STATE_FILE, FactState, Gap, SyncState, load_state, save_state

    state = SyncState("r1", 2, {"clicks": FactState(9, "2026-11-21T00:00:00", [Gap(3, 4, 77)])}, "0/16", {"clicks": 1})
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    written = json.loads((tmp_path / STATE_FILE).read_text())
    assert (written["format"], written["quarantined"]) == (2, {"clicks": 1})
