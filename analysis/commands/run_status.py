"""``status``: the state of every run of a sweep (done, running, pre-empted, failed, ...), and ``--resubmit``."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from analysis.collect import latest_sweep
from analysis.status import resubmit_command, summary, sweep_status


def status_cmd(args) -> int:
    src = Path(args.sweep) if args.sweep else latest_sweep()
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a sweep directory")
    df = sweep_status(src)
    if df.empty:
        print(f"{src}: no runs and no manifest.json below it")
        return 0
    shown = df if args.all else df[df["state"] != "done"]
    if len(shown):
        shown = shown.dropna(axis=1, how="all")
        print(shown.to_markdown(index=False, floatfmt=".1f"))
    print(f"{src}: {summary(df)}")
    if not args.resubmit:
        return 0
    left = df[~df["state"].isin(["done", "running"])]
    if left.empty:
        print("nothing to resubmit: every run is done or running")
        return 0
    cmd, cwd = resubmit_command(src)
    print(f"resubmitting {len(left)} runs ({', '.join(sorted(set(left['state'])))}); finished and running runs are "
          f"skipped:\n  (cd {shlex.quote(cwd)} && {shlex.join(cmd)})", flush=True)
    return subprocess.run(cmd, cwd=cwd).returncode
