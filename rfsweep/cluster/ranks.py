"""The ranks of one launch agree before they train, and end together when one of them fails or dies.

When an outside launcher starts every rank at once (SLURM's tasks of one job step, torchrun), rank 0 alone takes the
run folder's lease, checks the evaluator's weights, decides where training resumes, and may be told to stop while
starting; another rank alone may fail to build. Without an agreement the others would wait for the process group
until its timeout, holding their GPUs. So each rank says, in a small file of the run folder, whether it is ready to
train (`<run>/.ranks/<launch>/<rank>.json`; rank 0's carries its decisions, which every rank follows), and waits
until every rank is ready or one refused, for at most `cluster.start_timeout_s` seconds. A rank that gives up
waiting takes its "ready" back, so no other rank goes on into the process group alone.

After the agreement a watchdog thread ends this process (a rank blocked in a collective cannot notice it otherwise)
when another rank of the launch
- records a failure (`<rank>.failed`) or takes back its ready,
- dies without a word (SIGKILL, the OOM killer, a segfault): its pid is gone where it shares this host, or its
  heartbeat file (`<rank>.alive`, touched every poll) is older than `cluster.peer_timeout_s` on another host.
A rank that ends normally says so first (`<rank>.done`), and a rank that is recording a failure every rank raised
together (a non-finite loss, a lost lease) is never ended by its watchdog. Before it ends this process for a dead
peer, the watchdog calls `on_peer_lost(reason)` (the job records it and hands the job back to the scheduler).

A launch is one start of the job's ranks: the SLURM job, its step and its restart count (a requeued job is a new
launch), or torchrun's run id and restart count. With one process, or with Lightning's own launcher (which starts
the other ranks from rank 0's `fit`, after rank 0's checks and decisions), there is nothing to agree on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

from rfsweep.atomic import atomic_write
from rfsweep.cluster.lease import alive

RANKS_DIR = ".ranks"
RECORD_GRACE_S = 5.0  # after another rank records a failure, how long this rank may take to start recording it too


class RanksDisagree(RuntimeError):
    """Another rank of this launch refused or failed, or did not answer in time."""


# Where Lightning takes a process's rank from when it is imported (lightning.fabric.utilities.rank_zero._get_rank):
# the first of these that is set.
RANK_ENV = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def process_rank() -> int:
    """This process's global rank: 0 unless DDP started it as another rank (Lightning's launcher, SLURM tasks): the
    rank Lightning keeps (`rank_zero_only.rank`, which its strategy sets). Before Lightning is imported (a dry run never
    imports it) the first call settles it as importing Lightning would, from the environment (RANK_ENV); Lightning and
    torchmetrics keep a rank that is set."""
    from lightning_utilities.core.rank_zero import rank_zero_only  # deferred (~0.1 s): --help never asks for a rank

    if getattr(rank_zero_only, "rank", None) is None:
        rank_zero_only.rank = next((int(os.environ[key]) for key in RANK_ENV if os.environ.get(key) is not None), 0)
    return rank_zero_only.rank


def outside_launch(world: int, env=None) -> tuple[str, int] | None:
    """(launch id, this process's rank) when an outside launcher started all `world` ranks, else None."""
    env = os.environ if env is None else env
    if world <= 1:
        return None
    if env.get("SLURM_PROCID") is not None and int(env.get("SLURM_NTASKS", "1")) == world:
        job = env.get("SLURM_JOB_ID", "?")
        launch = f"slurm-{job}.{env.get('SLURM_STEP_ID', 'batch')}.{env.get('SLURM_RESTART_COUNT', '0')}"
        return launch, int(env["SLURM_PROCID"])
    if env.get("TORCHELASTIC_RUN_ID") and int(env.get("WORLD_SIZE", "1")) == world:
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}.{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", int(env["RANK"])
    return None


class Launch:
    """`launch.agree(decisions)` once this rank is ready to train (rank 0's decisions come back to every rank);
    `launch.fail(reason)` when it will not (or no longer) go on; `launch.recording()` while it records a failure the
    others raised too; `launch.done()` when it ends normally. A Launch of one process (`outside_launch` is None)
    agrees at once and never watches."""

    def __init__(self, run_dir: str | Path, world: int, timeout_s: float = 600.0, env=None, poll_s: float = 0.2,
                 peer_timeout_s: float = 60.0, on_peer_lost=None):
        found = outside_launch(world, env)
        self.world, self.timeout_s, self.poll_s = world, float(timeout_s), poll_s
        self.peer_timeout_s, self.on_peer_lost = float(peer_timeout_s), on_peer_lost
        self.id, self.rank = found if found else (None, 0)
        self.folder = Path(run_dir) / RANKS_DIR / self.id if self.id else None
        self.agreed = False
        self._said = False
        self._recording = threading.Event()
        self._stop = threading.Event()

    @property
    def shared(self) -> bool:
        return self.folder is not None

    def _say(self, name: str, ok: bool, reason: str = "", **extra) -> None:
        record = {"rank": self.rank, "ok": ok, "reason": reason, "host": socket.gethostname(), "pid": os.getpid(),
                  "time": time.time(), **extra}
        with atomic_write(self.folder / name, "w", fenced=False) as f:  # a rank that lost the folder still says so
            f.write(json.dumps(record))

    def _records(self, suffix: str) -> dict[int, dict]:
        out = {}
        for p in self.folder.glob(f"*{suffix}"):
            try:
                rec = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # being replaced: read at the next poll
            out[int(rec["rank"])] = rec
        return out

    def agree(self, decisions: dict | None = None) -> dict | None:
        """Say this rank is ready (rank 0 with its `decisions`: where training resumes); return rank 0's decisions
        when every rank is ready, raise RanksDisagree when one refused or the time ran out. Then watch the other
        ranks until the process ends (or `close`)."""
        if not self.shared:
            self.agreed = True
            return decisions
        self._say(f"{self.rank}.json", True, **({"decisions": decisions} if self.rank == 0 and decisions else {}))
        self._said = True
        deadline = time.time() + self.timeout_s
        while True:
            said = self._records(".json")
            refused = sorted(r for r, rec in said.items() if not rec["ok"] and r != self.rank)
            if refused:
                raise RanksDisagree(f"rank {refused[0]} of this launch did not start: {said[refused[0]]['reason']}")
            if len([r for r in said if 0 <= r < self.world]) >= self.world:
                break
            if time.time() > deadline:
                missing = sorted(set(range(self.world)) - set(said))
                raise RanksDisagree(f"ranks {missing} of this launch did not answer within cluster.start_timeout_s="
                                    f"{self.timeout_s:g} s")
            time.sleep(self.poll_s)
        self.agreed = True
        self.peers = {r: rec for r, rec in said.items() if r != self.rank}
        if self.rank == 0:  # earlier launches' records go
            for old in self.folder.parent.iterdir():
                if old != self.folder:
                    shutil.rmtree(old, ignore_errors=True)
        self._touch()
        threading.Thread(target=self._watch, name="rfsweep-ranks", daemon=True).start()
        return said[0].get("decisions")

    def fail(self, reason: str) -> None:
        """This rank will not go on: before the agreement the others stop waiting (a "ready" said already is taken
        back); after it, their watchdogs end them."""
        if not self.shared:
            return
        reason = reason.splitlines()[0][:300] if reason else "stopped"
        try:
            if self.agreed:
                self._say(f"{self.rank}.failed", False, reason)
            else:
                self._say(f"{self.rank}.json", False, reason)
                self._said = True
        except OSError:
            pass  # the others then wait until their timeout
        self._stop.set()

    def recording(self) -> None:
        """This rank records a failure now (every rank may have raised it together): its watchdog no longer ends it."""
        self._recording.set()

    def done(self) -> None:
        """This rank ends normally: its pid going away is no death; its watchdog stops."""
        if self.shared and self.agreed:
            try:
                self._say(f"{self.rank}.done", True)
            except OSError:
                pass
        self._stop.set()

    def close(self) -> None:
        self._stop.set()

    def _touch(self) -> None:
        """This rank's heartbeat: a count written into `<rank>.alive` (read back by content, which NFS revalidates
        at each open; an mtime may be cached for a minute and comes from the server's clock)."""
        self._beats = getattr(self, "_beats", 0) + 1
        try:
            with atomic_write(self.folder / f"{self.rank}.alive", "w", fenced=False) as f:
                f.write(str(self._beats))
        except OSError:
            pass  # a flaky disk: the others allow peer_timeout_s

    def dead_peers(self) -> dict[int, str]:
        """{rank: why} for the other ranks that died without a word: a pid gone on this host, or a heartbeat that
        has not changed for peer_timeout_s on another host (measured on this host's monotonic clock from when this
        rank last saw it change: no clock of another machine is compared). A rank that said `done` or `failed` is
        not dead."""
        host, out, now = socket.gethostname(), {}, time.monotonic()
        ended = set(self._records(".done")) | set(self._records(".failed"))
        seen = self.__dict__.setdefault("_seen", {})  # rank -> (heartbeat, when it last changed)
        for r, rec in self.peers.items():
            if r in ended:
                continue
            if rec.get("host") == host:
                if not alive(int(rec.get("pid", -1))):
                    out[r] = f"rank {r} (pid {rec.get('pid')}) died without a word"
                continue
            try:
                beat = (self.folder / f"{r}.alive").read_text()
            except OSError:
                beat = None
            if r not in seen or seen[r][0] != beat:
                seen[r] = (beat, now)
            elif now - seen[r][1] > self.peer_timeout_s:
                out[r] = (f"rank {r} on {rec.get('host')} gave no sign of life for {now - seen[r][1]:.0f} s "
                          f"(cluster.peer_timeout_s={self.peer_timeout_s:g})")
        return out

    def died_beside(self, wait_s: float = 3.0) -> str | None:
        """After an exception on this rank: why, if it came from a peer that died without a word (gloo reports a
        dead peer as a connection reset, often before its pid is reaped: asked for up to `wait_s`)."""
        if not self.shared or not self.agreed:
            return None
        deadline = time.time() + wait_s
        while True:
            dead = self.dead_peers()
            if dead:
                return dead[min(dead)]
            if time.time() > deadline:
                return None
            time.sleep(0.2)

    def lowest_living(self, dead=None) -> bool:
        """Whether this rank is the lowest one still alive, `dead` the dead ranks (default: read now); it records a
        peer's death and requeues the job."""
        dead = set(self.dead_peers() if dead is None else dead)
        return self.rank == min(set(range(self.world)) - dead)

    def _watch(self) -> None:
        failed_since = None
        while not self._stop.wait(max(self.poll_s * 5, 0.5)):
            self._touch()
            if self._recording.is_set():
                continue
            said = self._records(".json")
            failed = {r: rec for r, rec in self._records(".failed").items() if r != self.rank}
            failed.update({r: rec for r, rec in said.items() if r != self.rank and not rec["ok"]})
            if failed:  # a failure every rank raises together reaches this rank too: it gets RECORD_GRACE_S to say so
                failed_since = failed_since or time.time()
                if time.time() - failed_since < RECORD_GRACE_S:
                    continue
                r = min(failed)
                self._end(f"rank {r} of this launch failed ({failed[r]['reason']})", requeue=False)
            dead = self.dead_peers()
            if dead:
                self._end(dead[min(dead)], requeue=True, dead=set(dead))

    def _end(self, reason: str, requeue: bool, dead: set = frozenset()) -> None:
        """End this process for another rank's failure or death; the lowest living rank first records it
        (`on_peer_lost(reason, requeue)`: a death is handed back to the scheduler, a failure is not)."""
        if self._stop.is_set() or self._recording.is_set():
            return
        print(f"error: {reason}; rank {self.rank} stops", file=sys.stderr, flush=True)
        try:  # said before this rank ends: its peers see a failure, not another death to record and requeue
            self._say(f"{self.rank}.failed", False, f"stopped: {reason}")
        except OSError:
            pass
        if self.on_peer_lost is not None and self.lowest_living(dead):
            try:
                self.on_peer_lost(reason, requeue)
            except Exception as e:
                print(f"warning: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(1)

