"""`python -m analysis status`: every run's state, planned jobs that never started, a corrupt status file."""

import json

import pandas as pd

from analysis.__main__ import main
from analysis.status import run_folder, summary, sweep_status
from rfsweep.runfolder import write_status


def _sweep(tmp_path):
    jobs = [{"variant": v, "dataset": "shapes", "backbone": "mlp", "seed": 0}
            for v in ("rf/lognorm(0.00, 1.00)", "edm(-1.20, 1.20)", "eps/linear", "rf/cosmap")]
    (tmp_path / "manifest.json").write_text(json.dumps({"jobs": jobs, "settings": [[25, 5.0]], "weights": ["ema"]}))
    runs = [tmp_path / run_folder(j) for j in jobs]
    write_status(runs[0], "done", step=800)
    write_status(runs[1], "failed", step=12, reason="NonFiniteLossError: training loss is nan at step 12")
    write_status(runs[2], "preempted", step=400, signal="SIGUSR1")
    return runs


def test_status_of_every_planned_run(tmp_path, capsys):
    runs = _sweep(tmp_path)
    assert runs[0].relative_to(tmp_path).as_posix() == "shapes/rf-lognorm_0.00_1.00/mlp/seed0"
    df = sweep_status(tmp_path)
    assert list(df["state"]) == ["done", "preempted", "failed", "not started"]
    assert df.loc[df["state"] == "failed", "reason"].item().startswith("NonFiniteLossError")
    assert df.loc[df["state"] == "not started", "run"].item() == "shapes/rf-cosmap/mlp/seed0"
    assert summary(df) == "4 runs: 1 done, 1 preempted, 1 failed, 1 not started"
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "NonFiniteLossError" in out and "rf-cosmap" in out and out.strip().endswith("1 not started")
    (runs[0] / "status.json").write_text("{truncated")
    row = sweep_status(tmp_path).set_index("run").loc["shapes/rf-lognorm_0.00_1.00/mlp/seed0"]
    assert row["state"] == "failed" and "unreadable status.json" in row["reason"]


def test_running_runs_show_progress_eta_and_slurm_job_and_dead_ones_are_lost(tmp_path, monkeypatch, capsys):
    from rfsweep.cluster.lease import Lease

    live, dead = tmp_path / "a" / "run", tmp_path / "b" / "run"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    for run in (live, dead):
        write_status(run, "running", step=250, max_steps=1000, steps_per_s=5.0, samples_per_s=320.0)
    with Lease(live, timeout_s=60):
        df = sweep_status(tmp_path).set_index("run")
        assert main(["status", str(tmp_path)]) == 0
    a, b = df.loc["a/run"], df.loc["b/run"]
    assert a["state"] == "running" and a["step"] == "250/1000" and a["eta_min"] == 2.5
    assert a["slurm_job"] == "77" and a["restarts"] == 2
    assert b["state"] == "lost" and pd.isna(b["eta_min"])  # no live holder: no ETA
    out = capsys.readouterr().out
    assert "slurm_job" in out and "eta_min" in out and "lost" in out
