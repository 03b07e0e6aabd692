"""Where a sweep stands: the state of every run below it, and the planned runs that have not started.

A run's state is its `status.json` (`running`, `trained`, `preempted`, `failed` with the reason, `done`); a
planned job of the manifest without a folder is `not started`. `running` is what the run last wrote, so a job
killed outright (node failure, OOM) still says it: the age of its `last.ckpt` tells a live run from a dead one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from analysis.collect import read_manifest
from rfsweep.results import MANIFEST_FILE
from rfsweep.sweep import name_slug

STATES = ("done", "trained", "running", "preempted", "failed", "not started")


def run_folder(job: dict) -> str:
    """A manifest job's folder below the sweep: recorded by the manifest, else conf/config.yaml's job_name."""
    return job.get("run") or f"{job['dataset']}/{name_slug(job['variant'])}/{job['backbone']}/seed{job['seed']}"


def sweep_status(sweep: str | Path, now: float | None = None) -> pd.DataFrame:
    """One row per run: run (folder below the sweep), state, step, reason, ckpt_age_min."""
    sweep, now = Path(sweep), time.time() if now is None else now
    rows = {}
    for f in sorted(sweep.rglob("status.json")):
        run = f.parent
        try:
            s = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            s = {"state": "failed", "reason": f"unreadable status.json ({type(e).__name__})"}
        ckpt = run / "checkpoints" / "last.ckpt"
        age = (now - ckpt.stat().st_mtime) / 60 if ckpt.is_file() else None
        rows[run.relative_to(sweep).as_posix()] = {"state": s.get("state", "?"), "step": s.get("step"),
                                                   "reason": s.get("reason", ""), "ckpt_age_min": age}
    if (sweep / MANIFEST_FILE).is_file():
        for job in read_manifest(sweep / MANIFEST_FILE)["jobs"]:
            rows.setdefault(run_folder(job), {"state": "not started", "step": None, "reason": "",
                                              "ckpt_age_min": None})
    df = pd.DataFrame([{"run": k, **v} for k, v in rows.items()],
                      columns=["run", "state", "step", "reason", "ckpt_age_min"])
    return df.sort_values(["state", "run"], key=lambda c: c.map(_order) if c.name == "state" else c,
                          ignore_index=True)


def _order(state: str) -> int:
    return STATES.index(state) if state in STATES else len(STATES)


def summary(df: pd.DataFrame) -> str:
    counts = df["state"].value_counts()
    return f"{len(df)} runs: " + ", ".join(f"{counts[s]} {s}" for s in sorted(counts.index, key=_order))
