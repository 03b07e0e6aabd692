"""The end of a sweep: one screen saying what each job of this launch did, and an exit status that is 0 only when
every run of the sweep is finished.

Each job records its outcome in its run folder (`outcome.json`, tagged with this launch's id, which the callback
puts in the environment the jobs inherit: in-process, joblib workers, SLURM jobs). A job that left no outcome for
this launch died without a word (killed, cancelled before it started): the summary says so.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from rfsweep import runfolder
from rfsweep.results import MANIFEST_FILE
from rfsweep.run.job import LAUNCH_ENV

GOOD = ("done", "skipped", "stopped")  # stopped: by a race (rfsweep.run.race_control)
SHOWN = 40  # lines of unfinished jobs on the screen; the rest are counted


def launch_outcomes(sweep_dir: str | Path, launch: str | None) -> list[dict]:
    """One row per planned job of the manifest: run, outcome, reason (this launch's, else why there is none)."""
    sweep_dir = Path(sweep_dir)
    manifest = json.loads((sweep_dir / MANIFEST_FILE).read_text())
    rows = []
    for job in manifest["jobs"]:
        run = sweep_dir / job["run"]
        out = runfolder.read_outcome(run)
        if launch is not None and out.get("launch") == launch:
            rows.append({"run": job["run"], "outcome": out["outcome"], "reason": out.get("reason", "")})
            continue
        status = runfolder.read_status(run)
        state = status.get("state")
        reason = f"no outcome from this launch; status {state}" if state else "never started"
        if status.get("reason"):
            reason += f": {status['reason']}"
        rows.append({"run": job["run"], "outcome": "lost", "reason": reason})
    return rows


def render(sweep_dir: str | Path, rows: list[dict], width: int = 200) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    head = f"sweep {sweep_dir}: {len(rows)} jobs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    bad = [r for r in rows if r["outcome"] not in GOOD]
    lines = [head]
    for r in bad[:SHOWN]:
        line = f"  {r['outcome']:<10} {r['run']}  {r['reason']}"
        lines.append(line if len(line) <= width else line[: width - 3] + "...")
    if len(bad) > SHOWN:
        lines.append(f"  ... {len(bad) - SHOWN} more: python -m analysis status {sweep_dir}")
    if bad:
        lines.append(f"  run folders under {sweep_dir}; relaunch the unfinished ones: "
                     f"python -m analysis status {sweep_dir} --resubmit")
    return "\n".join(lines)


class SummaryCallback(Callback):
    """Tags the launch, prints the summary when the sweep ends, exits 1 unless every job is done or skipped."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.launch = None
        if config.get("dry_run"):
            return
        self.launch = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        os.environ[LAUNCH_ENV] = self.launch

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if getattr(self, "launch", None) is None:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if not (sweep_dir / MANIFEST_FILE).is_file():
            return
        rows = launch_outcomes(sweep_dir, self.launch)
        print(render(sweep_dir, rows), file=sys.stderr, flush=True)
        if any(r["outcome"] not in GOOD for r in rows):
            sys.exit(1)
