"""The run folder's write fence: the one place that knows whether this process may still write into its run folder.

A run folder is trained by one process at a time (its lease, `rfsweep.cluster.lease`). When a process is presumed
dead and another takes the folder over, the first one must write nothing more there. Every write into a run folder
asks the fence first: `rfsweep.atomic` (status, config, model.json, checkpoints, best weights, snapshots, results,
evidence banks, sample grids) asks it right before the rename that makes a file visible, so the window between the
check and the write is that one rename; writers that append (the CSV metrics) ask `permits` and drop their rows.

    with fenced(Fence(run_dir, lease)):    # rank 0: its lease is read at each check
        ...                                # every atomic write under run_dir is checked
    with fenced(Fence(run_dir)):           # another rank: no lease; lost only when the ranks agree rank 0 lost it

Outside a `fenced` block (tests, the analysis, a process that holds no run folder) nothing is checked.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path


class LeaseLost(RuntimeError):
    """Another process took over the run folder's lease: this one stops at once and writes nothing more there."""


class Fence:
    """`holds()`: may this process still write into `run_dir`; `check()`: LeaseLost unless it may; `lose(reason)`:
    it may not (the heartbeat found another holder, or the ranks agreed rank 0 lost the folder)."""

    def __init__(self, run_dir: str | Path, lease=None):
        self.run_dir = Path(run_dir).resolve()
        self.lease = lease  # a held `Lease` (rank 0), read at each check; None for another rank
        self.lost: str | None = None

    def lose(self, reason: str) -> None:
        self.lost = self.lost or reason

    def holds(self) -> bool:
        """Whether the folder is still ours, the lease read now where one is held (its heartbeat reads it only every
        lease_timeout_s / 10)."""
        if self.lost is None and self.lease is not None and not self.lease.confirm():
            self.lose(f"{self.run_dir}: the lease was taken over by another process")
        return self.lost is None

    def check(self) -> None:
        if not self.holds():
            raise LeaseLost(self.lost)

    def covers(self, path: str | Path) -> bool:
        p = Path(path).resolve()
        return p == self.run_dir or self.run_dir in p.parents


_ACTIVE: list[Fence] = []
_LOCK = threading.Lock()


@contextmanager
def fenced(fence: Fence):
    """Every write under `fence.run_dir` asks `fence` while the block runs."""
    with _LOCK:
        _ACTIVE.append(fence)
    try:
        yield fence
    finally:
        with _LOCK:
            _ACTIVE.remove(fence)


def current(path: str | Path) -> Fence | None:
    """The fence that covers `path`, if any."""
    return next((f for f in reversed(_ACTIVE) if f.covers(path)), None)


def check_write(path: str | Path) -> None:
    """LeaseLost when `path` lies in a run folder this process no longer holds (called before every atomic write's
    rename, `rfsweep.atomic`)."""
    fence = current(path)
    if fence is not None:
        fence.check()


def permits(path: str | Path) -> bool:
    """Whether this process may write `path` (for writers that drop what they may not write instead of raising)."""
    fence = current(path)
    return fence is None or fence.holds()
