"""One trainer per run folder: a lease file (host, pid, SLURM job, step and restart, heartbeat) taken before a job
touches the run.

A second process that finds a fresh lease refuses with one line naming the holder. A lease is stale, and taken
over, when its holder is gone:
- its heartbeat is older than `timeout_s` (a holder on another host that died with its node);
- its holder is on this host and its pid is dead;
- it comes from an earlier instance of this SLURM job: the same job id with a lower `SLURM_RESTART_COUNT` (SLURM
  ended that instance before it requeued the job);
- the file is torn or corrupt (nobody can prove they hold it).
A live holder of the same SLURM job and the same restart (a second `srun ... &`, a second pane of one `salloc`) is
not stale.

A thread renews the heartbeat every `timeout_s / 10` seconds (0.5 s at least) while the lease is held. A read it
cannot parse (a lease another host is renaming in reads torn on NFS) is never written over: the next beat reads it
again. A removed lease file is re-created by an exclusive link; a readable lease with another token means another
process took the run over (we were presumed dead): the thread sets `lease.lost`, records the new holder in
`lease.taken_by`, calls `on_lost(taken_by)` once and stops renewing. `lease.confirm()` makes the same read at once:
the run folder's write fence (`rfsweep.fence`) asks it before every write.

Taking a lease is exclusive on a local or NFS file system: a hard link of a complete file (a link that succeeded but
whose reply was lost fails with EEXIST; the lease then carries our token, and is ours). A stale lease is first renamed
aside under a name of our own (of two takers only one rename finds it), read back (a fresh lease renamed aside by
mistake is linked back and we refuse), and then our record is linked in: the link, not a read-back, decides.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable

from rfsweep.cluster.slurm import restart_count, slurm_job_id
from rfsweep.errors import LeaseHeld  # noqa: F401 (raised here, defined in the one home of user errors)
from rfsweep.fence import LeaseLost  # noqa: F401 (what a process that lost its lease raises: the fence's)
from rfsweep.runfolder import LEASE


def alive(pid: int) -> bool:
    """Whether the process `pid` of this host is alive (a zombie, dead and not yet reaped, is not)."""
    if pid <= 0:  # no pid recorded (0 and -1 would ask about a process group or every process)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True  # no /proc: alive as far as we can tell


def describe(lease: dict, now: float | None = None) -> str:
    age = (now or time.time()) - float(lease.get("heartbeat", 0))
    job = f", SLURM job {lease['slurm_job']}" if lease.get("slurm_job") else ""
    if job and lease.get("slurm_step") is not None:
        job += f" step {lease['slurm_step']}"
    if job and lease.get("slurm_restarts"):
        job += f" restart {lease['slurm_restarts']}"
    return f"host {lease.get('host')} pid {lease.get('pid')}{job}, heartbeat {age:.0f} s ago"


def read_lease(run_dir: str | Path) -> dict | None:
    """The lease; None when there is none; {} for a torn or corrupt file."""
    try:
        lease = json.loads((Path(run_dir) / LEASE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # torn or corrupt: nobody can prove they hold it; treated as stale
    return lease if isinstance(lease, dict) else {}


def is_stale(lease: dict, timeout_s: float, now: float | None = None) -> bool:
    if not lease:
        return True
    now = time.time() if now is None else now
    try:
        if now - float(lease.get("heartbeat", 0)) > timeout_s:
            return True
        if lease.get("host") == socket.gethostname() and not alive(int(lease.get("pid", -1))):
            return True
        job = slurm_job_id()
        return bool(job and lease.get("slurm_job") == job and int(lease.get("slurm_restarts", 0)) < restart_count())
    except (TypeError, ValueError):
        return True  # corrupt fields


UNREADABLE_READS = 4  # a lease that reads torn is read again this many times, 0.5 s apart, before it counts as corrupt


class Lease:
    """`with Lease(run_dir, timeout_s, on_lost=None) as lease:` holds the run folder or raises LeaseHeld.
    `lease.lost` (a threading.Event) is set once another process has taken the run over; `lease.taken_by` is then
    its lease record, and `on_lost(taken_by)` has been called once from the heartbeat thread."""

    def __init__(self, run_dir: str | Path, timeout_s: float = 600.0,
                 on_lost: Callable[[dict], object] | None = None):
        self.path = Path(run_dir) / LEASE
        self.timeout_s = float(timeout_s)
        self.token = uuid.uuid4().hex
        self.on_lost = on_lost
        self.lost = threading.Event()
        self.taken_by: dict = {}
        self._stop = threading.Event()
        self._losing = threading.RLock()  # an on_lost that asks `confirm` again does not deadlock
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        rec = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
        job = slurm_job_id()
        if job:
            rec["slurm_job"] = job
            rec["slurm_restarts"] = restart_count()
            if os.environ.get("SLURM_STEP_ID"):
                rec["slurm_step"] = os.environ["SLURM_STEP_ID"]
        return rec

    def _write(self) -> None:
        """Renew our lease: a complete file renamed over it (not through the write fence, which reads this file)."""
        tmp = self.path.with_name(f".{LEASE}.{self.token}.beat")
        with open(tmp, "w") as f:
            f.write(json.dumps(self._record()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _link(self) -> bool:
        """Our record as the lease if there is none (atomic, complete); False if a lease is there."""
        tmp = self.path.with_name(f".{LEASE}.{self.token}")
        tmp.write_text(json.dumps(self._record()))
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> Lease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lease taken aside, or one that vanished between our link and our read: again
            if self._link():
                break
            held = read_lease(self.path.parent)
            for _ in range(UNREADABLE_READS):  # torn for a moment while another host renames its lease in (NFS)
                if held != {}:
                    break
                time.sleep(0.5)
                held = read_lease(self.path.parent)
            if held and held.get("token") == self.token:
                break  # our link landed; its reply was lost (NFS): the lease is ours
            if held is not None and not is_stale(held, self.timeout_s):
                raise LeaseHeld(f"{self.path.parent} is being trained by {describe(held)} (allowed: one process per "
                                f"run folder; the lease is taken over once its holder is gone or its heartbeat is "
                                f"older than cluster.lease_timeout_s={self.timeout_s:g})")
            if held is not None:
                self._take_aside(held)
        else:
            raise LeaseHeld(f"{self.path.parent}: its lease changed hands three times while we tried to take it")
        self._thread = threading.Thread(target=self._beat, name="rfsweep-lease", daemon=True)
        self._thread.start()
        return self

    def _take_aside(self, stale: dict) -> None:
        """Rename the stale lease `stale` aside; if what we renamed is not it (another taker linked a fresh lease in
        meanwhile), put that one back and refuse."""
        aside = self.path.with_name(f".{LEASE}.{self.token}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another taker renamed it first: our next link decides
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        moved = moved if isinstance(moved, dict) else {}
        if moved.get("token") != stale.get("token"):  # a fresh lease (or one unreadable now): not what we judged
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            raise LeaseHeld(f"{self.path.parent} was just taken over by {describe(moved)}")
        aside.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(max(self.timeout_s / 10, 0.5)):
            with self._losing:  # `confirm` cannot find a loss between this read and this write
                if self.lost.is_set():
                    return
                held = read_lease(self.path.parent)
                if held and held.get("token") != self.token:  # taken over (we were presumed dead): stop renewing
                    self._lose(held)
                    return
                try:
                    if held is None:  # removed while we hold it: re-create, unless a new holder linked one meanwhile
                        self._link()
                    elif held:  # ours (an unreadable lease is never written over: read again at the next beat)
                        self._write()
                except OSError:
                    pass  # a full or flaky disk: the next beat retries; the lease only goes stale after timeout_s

    def confirm(self) -> bool:
        """Whether we still hold the lease, read now (before a write; the heartbeat reads it only every
        timeout_s / 10): another holder's readable lease loses it as the heartbeat would (`lost`, `on_lost`). When it
        returns False, `on_lost` has run."""
        with self._losing:  # a loss the heartbeat is reporting right now: wait for its on_lost
            if self.lost.is_set():
                return False
        held = read_lease(self.path.parent)
        if held and held.get("token") != self.token:
            self._lose(held)
            return False
        return True

    def _lose(self, held: dict) -> None:
        with self._losing:  # the heartbeat and `confirm` may find the new holder at once: reported once
            if self.lost.is_set():
                return
            self.taken_by = held
            self.lost.set()
            self._stop.set()  # found by `confirm`: the heartbeat must not renew (or re-create) the lease again
            print(f"lease: {self.path.parent} was taken over by {describe(held)}; this process no longer holds it",
                  file=sys.stderr, flush=True)
            if self.on_lost is not None:
                try:
                    self.on_lost(held)
                except Exception:
                    traceback.print_exc()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        held = read_lease(self.path.parent) or {}
        if held.get("token") == self.token:  # never another holder's lease
            self.path.unlink(missing_ok=True)
        elif held:  # taken over since the last read: said as the heartbeat would (what ended the job is not recorded)
            self._lose(held)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
