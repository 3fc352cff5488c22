"""The notebooks run, top to bottom, against a synced warehouse: a notebook that no longer runs is a defect."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from pipeline.config import Settings
from pipeline.generate import Generator
from pipeline.options import Mode
from pipeline.sync import SyncOptions, sync

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(notebook: Path, settings: Settings, pg: psycopg.Connection) -> None:
    Generator(pg, seed=3).batch(advertisers=2, campaigns=2, impressions=200, ctr=0.1)
    pg.execute("INSERT INTO impressions (campaign_id, created_at) VALUES (NULL, now())")  # one to quarantine
    sync(settings, SyncOptions(mode=Mode.FULL))
    cells = json.loads(notebook.read_text())["cells"]
    namespace: dict[str, object] = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{notebook.name} cell {cell['id']}", "exec"), namespace)
    assert [c.ok for c in namespace["report"].checks] == [True] * len(namespace["report"].checks)
    assert namespace["campaign_ctr"]["impressions"].sum() == 2 * 2 * 200
