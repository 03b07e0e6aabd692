"""One trainer per run folder: a lease file (host, pid, SLURM job, heartbeat) taken before a job touches the run.

A second process that finds a fresh lease refuses with one line naming the holder. A lease is stale, and taken
over, when its holder is gone: the same host and a dead pid, the same SLURM job (a requeued job is the only
instance of its job id), or a heartbeat older than `timeout_s` (a holder on another host that died with its node).
A thread renews the heartbeat every `timeout_s / 10` seconds while the lease is held.

Taking a lease is atomic on a local or NFS file system: a hard link of a complete file for a free folder; a stale
lease is replaced by a rename and then read back, so of two processes taking over at once only one keeps it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from rfsweep.atomic import atomic_write
from rfsweep.cluster.slurm import slurm_job_id
from rfsweep.runfolder import LEASE


class LeaseHeld(RuntimeError):
    """Another live process trains this run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(lease: dict, now: float | None = None) -> str:
    age = (now or time.time()) - float(lease.get("heartbeat", 0))
    job = f", SLURM job {lease['slurm_job']}" if lease.get("slurm_job") else ""
    return f"host {lease.get('host')} pid {lease.get('pid')}{job}, heartbeat {age:.0f} s ago"


def read_lease(run_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / LEASE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return {}  # torn or corrupt: nobody can prove they hold it; treated as stale


def is_stale(lease: dict, timeout_s: float, now: float | None = None) -> bool:
    if not lease:
        return True
    now = time.time() if now is None else now
    if now - float(lease.get("heartbeat", 0)) > timeout_s:
        return True
    if lease.get("host") == socket.gethostname() and not _alive(int(lease.get("pid", -1))):
        return True
    job = slurm_job_id()
    return bool(job and lease.get("slurm_job") == job and lease.get("pid") != os.getpid())


class Lease:
    """`with Lease(run_dir, timeout_s):` holds the run folder or raises LeaseHeld."""

    def __init__(self, run_dir: str | Path, timeout_s: float = 600.0):
        self.path = Path(run_dir) / LEASE
        self.timeout_s = float(timeout_s)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        rec = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
        job = slurm_job_id()
        if job:
            rec["slurm_job"] = job
        return rec

    def _write(self) -> None:
        with atomic_write(self.path, "w") as f:
            f.write(json.dumps(self._record()))

    def acquire(self) -> Lease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{LEASE}.{self.token}")
        tmp.write_text(json.dumps(self._record()))
        try:
            os.link(tmp, self.path)  # atomic, complete, and fails if a lease is there
        except FileExistsError:
            held = read_lease(self.path.parent)
            if held is not None and not is_stale(held, self.timeout_s):
                raise LeaseHeld(f"{self.path.parent} is being trained by {describe(held)} (allowed: one process per "
                                f"run folder; the lease is taken over once its holder is gone or its heartbeat is "
                                f"older than cluster.lease_timeout_s={self.timeout_s:g})") from None
            self._write()
            time.sleep(0.05)  # another taker's rename lands in this window; whoever reads its own token keeps it
            mine = read_lease(self.path.parent) or {}
            if mine.get("token") != self.token:
                raise LeaseHeld(f"{self.path.parent} was just taken over by {describe(mine)}") from None
        finally:
            tmp.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._beat, name="rfsweep-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(max(self.timeout_s / 10, 0.5)):
            held = read_lease(self.path.parent) or {}
            if held.get("token") != self.token:  # taken over (we were presumed dead): stop renewing
                return
            try:
                self._write()
            except OSError:
                pass  # a full or flaky disk: the next beat retries; the lease only goes stale after timeout_s

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        held = read_lease(self.path.parent) or {}
        if held.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
