"""SLURM: after the pre-emption checkpoint (SIGUSR1, which SLURM sends `signal_delay_s` before the time limit), put
the job back in the queue, so a sweep continues on its own; the requeued job resumes from `last.ckpt`. A plain
SIGTERM (scancel, or a pre-emption SLURM requeues itself) is never requeued here."""

from __future__ import annotations

import os
import subprocess


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` for an array task (submitit submits arrays)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue(job: str) -> str:
    """`scontrol requeue <job>`; returns what happened, for status.json."""
    try:
        r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"scontrol requeue {job} failed: {type(e).__name__}: {e}"
    return f"requeued {job}" if r.returncode == 0 else f"scontrol requeue {job} failed: {r.stderr.strip()[:200]}"
