"""The ad sync, by stage: plan → extract → clean → changes → stage → load → state, with its run log.

`run` orchestrates one sync; the stages talk through the staged run on disk (see `stage`).
`gaps` holds the late-commit arithmetic and `runlog` the `sync_runs` bookkeeping.
"""

from pipeline.sync.run import SyncOptions, replay, sync
from pipeline.sync.runlog import SyncResult

__all__ = ["SyncOptions", "SyncResult", "replay", "sync"]
