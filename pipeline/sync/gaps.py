"""Id gaps: ranges below the high-water id that a still-running transaction may yet fill (late commits)."""

from __future__ import annotations

import numpy as np

from pipeline.sync.extract import Snapshot
from pipeline.sync.state import Gap


def missing_ranges(ids: np.ndarray, after: int, upto: int) -> list[tuple[int, int]]:
    """Inclusive id ranges within (after, upto] that are not in `ids`."""
    bounds = np.concatenate(([after], np.sort(ids).astype(np.int64), [upto + 1]))
    holes = np.nonzero(np.diff(bounds) > 1)[0]
    return [(int(bounds[i]) + 1, int(bounds[i + 1]) - 1) for i in holes]


def new_gaps(ids: np.ndarray, after: int, upto: int, snapshot: Snapshot) -> list[Gap]:
    """The holes among `ids` (read with `snapshot`) in (after, upto] that a transaction might still fill.

    None can once the snapshot's xmin has reached its own `xid_bound`: no transaction was running when it was
    taken, so a hole is for good (a rolled-back insert, a deleted row, a sequence jump), and none is kept.
    """
    if snapshot.xmin >= snapshot.xid_bound:
        return []
    return [Gap(lo, hi, snapshot.xid_bound) for lo, hi in missing_ranges(ids, after, upto)]


def open_gaps(gaps: list[Gap], found: np.ndarray, snapshot: Snapshot) -> list[Gap]:
    """The parts of earlier gaps, re-read as `found` with `snapshot`, still empty that some transaction might yet fill.

    A gap is closed for good once `snapshot`'s xmin has reached its `xid_bound`: every transaction that could
    hold its ids has ended, so a row one committed is visible to `snapshot` and was read into `found`.
    A gap without a bound (from an older state file) gets this run's: it is above every transaction id
    assigned before this snapshot, so above those of the transactions that drew its ids even earlier.
    """
    still_open = []
    for gap in gaps:
        bound = snapshot.xid_bound if gap.xid_bound is None else gap.xid_bound
        if snapshot.xmin >= bound:
            continue
        inside = found[(found >= gap.lo) & (found <= gap.hi)]
        still_open += [Gap(lo, hi, bound) for lo, hi in missing_ranges(inside, gap.lo - 1, gap.hi)]
    return still_open
