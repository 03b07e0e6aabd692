"""``wandb-dashboard`` (the sweep's W&B report, built as code; ``--save`` creates it) and ``wandb-sync`` (uploads
every offline W&B run below a sweep)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from analysis.wandb_study import build_report, describe, offline_run_folders, ranking_settings, sync_command
from rfsweep.results import MANIFEST_FILE, SETTINGS, WEIGHTS


def wandb_dashboard_cmd(args) -> int:
    if args.sweep:
        manifest = json.loads((Path(args.sweep) / MANIFEST_FILE).read_text())
        datasets = list(dict.fromkeys(j["dataset"] for j in manifest["jobs"]))
        settings = ranking_settings(manifest)
    else:
        datasets = args.datasets.split(",")
        settings = ranking_settings({"weights": list(WEIGHTS), "settings": [list(s) for s in SETTINGS]})
    report = build_report(args.entity, args.project, args.group, datasets, settings)
    print(describe(report))
    if args.save:
        report.save()
        print(f"saved: {report.url}")
    return 0


def wandb_sync_cmd(args) -> int:
    folders = offline_run_folders(args.sweep)
    if not folders:
        print(f"{args.sweep}: no offline W&B runs below it")
        return 0
    cmd = sync_command(folders, args.project, args.entity, dry_run=args.dry_run)
    print(f"{len(folders)} offline runs: {' '.join(cmd[:8])} ...", flush=True)
    return subprocess.run(cmd).returncode
