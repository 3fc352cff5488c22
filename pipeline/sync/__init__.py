"""The ad sync, by stage: plan → extract → clean → changes → stage → load → state, with its run log.

`run` orchestrates one sync; the stages talk through the staged run on disk (see `stage`).
"""

from pipeline.sync.run import SyncOptions, SyncResult, replay, sync

__all__ = ["SyncOptions", "SyncResult", "replay", "sync"]
