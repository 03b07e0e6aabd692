"""Where a sweep stands: the state of every run below it, the planned runs that have not started, and the command
that relaunches what is left.

A run's state is its `status.json` (`running` with its progress, `trained`, `preempted`, `cancelled`, `failed`
with the reason, `done`); a planned job of the manifest without a folder is `not started`. A run whose status
says `running` but whose lease has no live holder (the process or its node died) is `lost`: relaunching resumes
it from its last complete checkpoint (`checkpoints/step-<N>.ckpt`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd

from analysis.collect import read_manifest
from rfsweep import runfolder
from rfsweep.cluster.lease import is_stale, read_lease
from rfsweep.formulations import name_slug
from rfsweep.results import MANIFEST_FILE

STATES = ("done", "trained", "running", "preempted", "lost", "cancelled", "failed", "not started")
COLUMNS = ["run", "state", "step", "it/s", "eta_min", "slurm_job", "restarts", "age_min", "reason", "log"]
LEASE_TIMEOUT_S = 600.0  # conf/config.yaml cluster.lease_timeout_s


def run_folder(job: dict) -> str:
    """A manifest job's folder below the sweep: recorded by the manifest, else conf/config.yaml's job_name."""
    return job.get("run") or f"{job['dataset']}/{name_slug(job['variant'])}/{job['backbone']}/seed{job['seed']}"


def _row(run: Path, s: dict, now: float) -> dict:
    state = s.get("state", "?")
    if state == "running":
        lease = read_lease(run)
        if lease is None or is_stale(lease, LEASE_TIMEOUT_S, now):
            state = "lost"
    step, total, rate = s.get("step"), s.get("max_steps"), s.get("steps_per_s")
    eta = (total - step) / rate / 60 if state == "running" and rate and total and step is not None else None
    return {"state": state, "step": f"{step}/{total}" if total else step, "it/s": rate, "eta_min": eta,
            "slurm_job": s.get("slurm_job"), "restarts": s.get("restarts"),
            "age_min": (now - s["time"]) / 60 if s.get("time") else None,
            "reason": s.get("reason") or s.get("requeue") or "", "log": s.get("log")}


def sweep_status(sweep: str | Path, now: float | None = None) -> pd.DataFrame:
    """One row per run (COLUMNS): state, step / max_steps, steps per second, ETA, SLURM job and restarts, minutes
    since the run last wrote its status, the reason of a failure or stop, the job's log file."""
    sweep, now = Path(sweep), time.time() if now is None else now
    rows = {}
    for f in sorted(sweep.rglob(runfolder.STATUS)):
        rows[f.parent.relative_to(sweep).as_posix()] = _row(f.parent, runfolder.read_status(f.parent), now)
    if (sweep / MANIFEST_FILE).is_file():
        for job in read_manifest(sweep / MANIFEST_FILE)["jobs"]:
            rows.setdefault(run_folder(job), {"state": "not started"})
    df = pd.DataFrame([{"run": k, **v} for k, v in rows.items()], columns=COLUMNS)
    return df.sort_values(["state", "run"], key=lambda c: c.map(_order) if c.name == "state" else c,
                          ignore_index=True)


def _order(state: str) -> int:
    return STATES.index(state) if state in STATES else len(STATES)


def summary(df: pd.DataFrame) -> str:
    counts = df["state"].value_counts()
    return f"{len(df)} runs: " + ", ".join(f"{counts[s]} {s}" for s in sorted(counts.index, key=_order))


def resubmit_command(sweep: str | Path) -> tuple[list[str], str]:
    """The sweep's launch command (from its manifest) and the folder it ran in. Launched again, it submits only
    what is left: finished runs are skipped (before submission under SLURM), live ones refused, the rest resume."""
    manifest = json.loads((Path(sweep) / MANIFEST_FILE).read_text())
    if "command" not in manifest:
        raise ValueError(f"{sweep}/{MANIFEST_FILE} records no launch command (written before rfsweep recorded it); "
                         "relaunch the sweep's own command")
    cmd = manifest["command"]
    hydra = [o for o in cmd["hydra"] if not o.startswith("hydra.mode=")]
    return [sys.executable, "-m", "rfsweep", "-m", *cmd["task"], *hydra], manifest.get("cwd", ".")
