"""The ranks of one launch agree before they train, and end together when one of them fails.

When an outside launcher starts every rank at once (SLURM's tasks of one job step, torchrun), rank 0 alone takes the
run folder's lease, checks the evaluator's weights, and may be told to stop while starting; another rank alone may
fail to build. Without an agreement the others would wait for the process group until its timeout (30 minutes),
holding their GPUs. So each rank says, in a small file of the run folder, whether it is ready to train
(`<run>/.ranks/<launch>/<rank>.json`), and waits until every rank is ready or one refused, for at most
`cluster.start_timeout_s` seconds. After the agreement a watchdog thread ends this process when another rank of the
launch records a failure (a rank blocked in a collective cannot notice it otherwise).

A launch is one start of the job's ranks: the SLURM job, its step and its restart count (a requeued job is a new
launch), or torchrun's run id and restart count. With one process, or with Lightning's own launcher (which starts
the other ranks from rank 0's `fit`, after rank 0's checks), there is nothing to agree on.
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

RANKS_DIR = ".ranks"


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
    """`launch.agree()` once this rank is ready to train; `launch.fail(reason)` when it will not (or no longer) go
    on. A Launch of one process (`outside_launch` is None) agrees at once and never watches."""

    def __init__(self, run_dir: str | Path, world: int, timeout_s: float = 600.0, env=None, poll_s: float = 0.2):
        found = outside_launch(world, env)
        self.world, self.timeout_s, self.poll_s = world, float(timeout_s), poll_s
        self.id, self.rank = found if found else (None, 0)
        self.folder = Path(run_dir) / RANKS_DIR / self.id if self.id else None
        self.agreed = False
        self._said = False
        self._stop = threading.Event()

    @property
    def shared(self) -> bool:
        return self.folder is not None

    def _say(self, name: str, ok: bool, reason: str = "") -> None:
        record = {"rank": self.rank, "ok": ok, "reason": reason, "host": socket.gethostname(), "pid": os.getpid(),
                  "time": time.time()}
        with atomic_write(self.folder / name, "w") as f:
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

    def agree(self) -> None:
        """Say this rank is ready; return when every rank is, raise RanksDisagree when one refused or the time ran
        out. Then watch the other ranks until the process ends."""
        if not self.shared:
            self.agreed = True
            return
        self._say(f"{self.rank}.json", True)
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
        if self.rank == 0:  # earlier launches' records go
            for old in self.folder.parent.iterdir():
                if old != self.folder:
                    shutil.rmtree(old, ignore_errors=True)
        threading.Thread(target=self._watch, name="rfsweep-ranks", daemon=True).start()

    def fail(self, reason: str) -> None:
        """This rank will not go on: before the agreement the others stop waiting; after it, their watchdogs end
        them."""
        if not self.shared:
            return
        reason = reason.splitlines()[0][:300] if reason else "stopped"
        try:
            if self.agreed:
                self._say(f"{self.rank}.failed", False, reason)
            elif not self._said:
                self._say(f"{self.rank}.json", False, reason)
                self._said = True
        except OSError:
            pass  # the others then wait until their timeout
        self._stop.set()

    def close(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(max(self.poll_s * 10, 1.0)):
            failed = {r: rec for r, rec in self._records(".failed").items() if r != self.rank}
            if failed:
                r = min(failed)
                print(f"error: rank {r} of this launch failed ({failed[r]['reason']}); rank {self.rank} stops",
                      file=sys.stderr, flush=True)
                os._exit(1)
