"""Driving the local one-node SLURM from the cluster tests (test infrastructure, not part of rfsweep).

The tests pre-empt a job at a chosen point of its work, whatever the machine's speed: SLURM's own time limit sends
the pre-emption signal, but SLURM checks time limits only every 30 s (its warning may come up to 30 s after the
limit allows it), so the test freezes the job's processes (SIGSTOP), shortens the job's time limit so that the next
check sends the signal, waits until the signal is pending in every frozen process, and lets them go on (SIGCONT):
the job then meets the signal at the step it was frozen at. The limit is raised again once the job is requeued.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import datetime

# a job's own limit: long enough for any launch here, and short enough (<= 10 min) that submitit counts every
# pre-emption signal as a time-out (against max_num_timeout), as at a real time limit
LONG_LIMIT_MIN = 10


def run(*cmd: str, check: bool = True) -> str:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def job_field(job: str, name: str) -> str | None:
    """A field of `scontrol show job` (JobId, JobState, StartTime, Restarts, TimeLimit, ...)."""
    out = run("scontrol", "-o", "show", "job", job, check=False)
    for token in out.split():
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


def task_pids(job: str) -> dict[int, int]:
    """{global rank: pid} of the job's tasks: a step's tasks (srun), else the batch step's process."""
    numeric = job_field(job, "JobId") or job
    steps: dict[str, dict[int, int]] = {}
    for line in run("scontrol", "listpids", numeric, check=False).splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5 and parts[4].isdigit():
            steps.setdefault(parts[2], {})[int(parts[4])] = int(parts[0])
    numbered = [s for s in steps if s.isdigit()]
    return steps[max(numbered, key=int)] if numbered else steps.get("batch", {})


def _pending(pid: int, sig: signal.Signals) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("ShdPnd:", "SigPnd:")) and int(line.split()[1], 16) & (1 << (sig - 1)):
                    return True
    except OSError:
        return True  # gone: nothing to wait for
    return False


def preempt_by_time_limit(job: str, delay_s: int, sig: signal.Signals, pids: list[int] | None = None,
                          timeout: float = 120.0) -> float:
    """Freeze the job's tasks, shorten its time limit so that SLURM's next check sends `sig` (the job's
    `--signal=...@delay_s`, delay_s >= 120), wait until every task has it pending, let them go on. Returns the
    seconds waited for SLURM."""
    pids = pids if pids is not None else list(task_pids(job).values())
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    start = datetime.fromisoformat(job_field(job, "StartTime")).timestamp()
    elapsed = time.time() - start
    minutes = int((elapsed + delay_s + 30) // 60)  # the end falls within delay + 30 s of now: the next check warns
    run("scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}")
    t0 = time.time()
    try:
        while not all(_pending(p, sig) for p in pids):
            if time.time() - t0 > timeout:
                raise TimeoutError(f"SLURM sent no {sig.name} to job {job} within {timeout:.0f} s")
            time.sleep(0.25)
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
    return time.time() - t0


def restore_limit_after_requeue(job: str, restarts: int, timeout: float = 300.0) -> None:
    """Once SLURM has requeued the job (its restart count passes `restarts`), give it its long limit back."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        r = job_field(job, "Restarts")
        if r is not None and int(r) > restarts:
            run("scontrol", "update", f"JobId={job}", f"TimeLimit={LONG_LIMIT_MIN}")
            return
        if job_field(job, "JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", None):
            return
        time.sleep(0.25)
