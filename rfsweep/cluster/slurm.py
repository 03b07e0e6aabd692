"""SLURM seen from inside a job: its id (the array task id as submitit submits), how often it was requeued, its log
file, `scontrol requeue`, and what SLURM's accounting says the job's state is. Outside SLURM every query answers
None, and nothing here ever waits long on the scheduler (each call has a timeout)."""

from __future__ import annotations

import os
import subprocess


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` for an array task (submitit submits arrays)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def restart_count() -> int:
    """How many times SLURM has requeued this job (0 for its first start)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def job_log() -> str | None:
    """The file this process's stdout goes to (a SLURM job's log, submitit's `<job>_<task>_log.out`), if a file."""
    try:
        path = os.readlink("/proc/self/fd/1")
    except OSError:
        return None
    return path if path.startswith("/") and os.path.isfile(path) else None


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess | str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"


def requeue(job: str) -> str:
    """`scontrol requeue <job>`; returns what happened, for status.json."""
    r = _run(["scontrol", "requeue", job])
    if isinstance(r, str):
        return f"scontrol requeue {job} failed: {r}"
    return f"requeued {job}" if r.returncode == 0 else f"scontrol requeue {job} failed: {r.stderr.strip()[:200]}"


def accounting_state(job: str) -> str | None:
    """The job's state in SLURM's accounting (`sacct`), e.g. CANCELLED, TIMEOUT, PREEMPTED, RUNNING; None without
    accounting. Inside a job that has just got SIGTERM this tells a `scancel` (CANCELLED) from other stops, which
    `scontrol` cannot (it says COMPLETING for all of them)."""
    r = _run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"], timeout=20)
    if isinstance(r, str) or r.returncode != 0:
        return None
    lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    return lines[-1].split()[0].rstrip("+") if lines else None
