"""The ad sync, by stage: plan → extract → clean → changes → stage → load → state, with its run log.

Its public face is `pipeline.sync.run` (`sync`, `replay`, `prune`, `SyncOptions`) and `pipeline.sync.runlog`
(`SyncResult`). The stages talk through the staged run on disk (see `stage`); `gaps` holds the late-commit
arithmetic and `runlog` the `sync_runs` bookkeeping. Nothing is imported here: the run itself (`execute`) pulls in
Polars, Arrow and the database drivers, which a caller of `state` or `stage` alone need not pay for; `run` starts
opening the source (`run_source`) before it imports `execute`.
"""
