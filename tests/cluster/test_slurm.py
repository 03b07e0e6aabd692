"""Sweeps on a real one-node SLURM (`make test-cluster`: scripts/slurm_local.sh starts munged, MariaDB, slurmdbd,
slurmctld and slurmd on this machine). Nothing here sends a signal by hand: SLURM's time limit pre-empts the jobs,
submitit requeues them, `scancel` cancels one.

Everything is submitted at once (the node has two CPUs, so the jobs queue) and checked by the tests below:
- a 2 variants x 2 datasets grid through `hydra/launcher=slurm` (submitit's sbatch and job array), one-minute time
  limit with the pre-emption signal 40 s before it: every job is pre-empted and requeued at least once and ends with
  weights bit-identical to the same job run without interruption (a local sweep);
- a job with `max_num_timeout=0`: pre-empted once, not requeued, recorded as pre-empted;
- a job cancelled with `scancel` while it trains: not requeued, recorded as cancelled, the sweep does not hang;
- a plain sbatch script (`--signal=B:USR1@40 --requeue`, no submitit): rfsweep requeues it itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from analysis.__main__ import main as analysis_main
from analysis.status import sweep_status
from rfsweep.runfolder import read_outcome, read_status
from tests.helpers import ROOT, _env, popen_cli

pytestmark = pytest.mark.cluster

VARIANTS = '"rf/lognorm(0.00, 1.00)","eps/linear"'
STEPS = 3200  # about 50 s of training on one core: longer than the 20-50 s a job runs before SLURM's signal
SLURM = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=40",
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3",
         "hydra.launcher.partition=debug"]


def common(root: Path, steps: int = STEPS) -> list[str]:
    return ["backbone=mlp", "logger=csv", "conditioning=hash", f"trainer.max_steps={steps}", "trainer.ckpt_every=400",
            "trainer.val_every=800", "trainer.n_val=64", "trainer.batch_size=64", "trainer.warmup_steps=50",
            "trainer.threads=1", "sampler.n_grid=8", "sampler.steps=5", f"paths.cache={root}/cache"]


def grid(root: Path, where: str, evaluate: bool = True) -> list[str]:
    ev = ["eval=embedded", "eval.n_samples=32", "eval.batch_size=32", "eval.weights=[ema]",
          "eval.settings=[[5,5.0],[25,5.0]]"] if evaluate else ["eval=none"]
    return [*common(root), "-m", f"formulation.variant={VARIANTS}", "data=digits,shapes", "name=grid", *ev,
            f"paths.sweeps={root}/{where}"]


def _sacct(job: str) -> dict:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State"], capture_output=True,
                         text=True, timeout=30).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def _restarts(job: str) -> int | None:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    for token in out.split():
        if token.startswith("Restarts="):
            return int(token.split("=")[1])
    return None


def _wait(procs: dict, until: float) -> dict:
    results = {}
    for name, p in procs.items():
        try:
            out, err = p.communicate(timeout=max(until - time.time(), 1))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            err += f"\n[test] {name} still running at the deadline"
        results[name] = (p.returncode, out, err)
    return results


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode:
        pytest.fail("no SLURM answers here: run `bash scripts/slurm_local.sh up` (make test-cluster does)")
    root = tmp_path_factory.mktemp("slurm")
    start = time.time()
    procs = {
        # first in the queue, so it runs at once and is cancelled while it trains
        "cancel": popen_cli([*common(root, 100000), "-m", "seed=7", "data=digits", "eval=none", "name=cancel",
                             f"paths.sweeps={root}/cancel", *SLURM, "hydra.launcher.timeout_min=10"]),
        # a long job that may not be requeued, and one whose loss diverges at once (lr 1e30)
        "limit": popen_cli([*common(root, 100000), "-m", "seed=8", "data=digits", "eval=none", "name=limit",
                            "optimizer.lr=1e-3,1e30", "backbone.label=mlp_lr${optimizer.lr}", "trainer.grad_clip=null",
                            f"paths.sweeps={root}/limit", *SLURM, "hydra.launcher.max_num_timeout=0"]),
        "grid": popen_cli([*grid(root, "slurm"), *SLURM, "hydra.launcher.max_num_timeout=20"]),
    }
    # a plain sbatch job: the same job as the grid's first one, run by `python -m rfsweep` itself (exec: it gets the
    # batch step's signal); its folder is a single run's
    plain_log = root / "plain.log"
    args = [*common(root), 'formulation.variant="rf/lognorm(0.00, 1.00)"', "data=digits", "eval=none",
            "name=plain", f"paths.runs={root}/plain"]
    script = root / "plain.sh"
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
    script.write_text(f"#!/bin/bash\n#SBATCH --time=1 --signal=B:USR1@40 --requeue --open-mode=append -c 1 --mem=3G\n"
                      f"#SBATCH -o {plain_log} -J plain\ncd {ROOT}\nexec {sys.executable} -m rfsweep {quoted}\n")
    plain_job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=30,
                               env=_env()).stdout.strip()
    # the uninterrupted reference runs, locally and at the lowest CPU priority (SLURM's jobs must start within the
    # 20 s before their signal), mostly while SLURM's requeued jobs wait out their hold
    procs["reference"] = popen_cli(grid(root, "reference", evaluate=False), nice=19)
    cancel_run = root / "cancel" / "cancel" / "digits" / "rf-lognorm_0.00_1.00" / "mlp" / "seed7"
    cancelled = None
    while time.time() < start + 300 and cancelled is None:
        s = read_status(cancel_run)
        if s.get("state") == "running" and s.get("slurm_job") and (cancel_run / "checkpoints" / "last.ckpt").exists():
            cancelled = s["slurm_job"]
            subprocess.run(["scancel", cancelled], check=True, timeout=30)
        time.sleep(1)
    results = _wait(procs, start + 540)
    for _ in range(120):  # the plain job ends on its own (requeued once by rfsweep)
        if read_status(root / "plain" / "plain" / "digits" / "rf-lognorm_0.00_1.00" / "mlp" / "seed0").get(
                "state") == "done" or time.time() > start + 560:
            break
        time.sleep(2)
    print(f"[test] cluster fixture: {time.time() - start:.0f} s", file=sys.stderr)
    for f in sorted(root.rglob("status.json")):  # how often SLURM pre-empted each job (for the log)
        s = json.loads(f.read_text())
        print(f"[test] {f.parent.relative_to(root)}: {s['state']} restarts={s.get('restarts')}", file=sys.stderr)
    return {"root": root, "results": results, "cancelled": cancelled, "plain_job": plain_job, "plain_log": plain_log}


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_grid_is_preempted_by_slurm_requeued_and_ends_bit_identical(cluster):
    root = cluster["root"]
    code, out, err = cluster["results"]["grid"]
    assert code == 0, err[-4000:]
    assert "4 jobs: 4 done" in err, err[-2000:]
    ref_code, _, ref_err = cluster["results"]["reference"]
    assert ref_code == 0, ref_err[-3000:]
    sweep = root / "slurm" / "grid"
    runs = sorted(p.parent for p in sweep.rglob("status.json"))
    assert len(runs) == 4
    for run in runs:
        status = read_status(run)
        assert status["state"] == "done" and status["slurm_job"], status
        assert _restarts(status["slurm_job"]) >= 1, status  # SLURM requeued it at least once
        assert read_outcome(run)["outcome"] == "done"
        ref = root / "reference" / "grid" / run.relative_to(sweep)
        a, b = _weights(run), _weights(ref)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run
        log = Path(status["log"]).read_text() + Path(status["log"]).with_suffix(".err").read_text()
        # exactly one requeue per pre-emption: as many SLURM restarts as checkpoints written at a signal
        assert log.count("pre-empted at step") == _restarts(status["slurm_job"]) == log.count("requeued by submitit")
    table = sweep_status(sweep)
    assert list(table["state"]) == ["done"] * 4 and table["restarts"].ge(1).all() and table["slurm_job"].notna().all()
    assert analysis_main(["rank-table", "--results", str(sweep), "--out", str(root / "tables")]) == 0
    again = subprocess.run([sys.executable, "-m", "rfsweep", *grid(root, "slurm"), *SLURM], cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=300)  # relaunched: nothing left to submit
    assert again.returncode == 0 and "4 jobs: 4 skipped" in again.stderr, again.stderr[-3000:]
    said = again.stdout + again.stderr
    assert said.count("not submitted (skipped: finished earlier)") == 4 and "Submitting" not in said


def test_max_num_timeout_is_respected_and_a_diverged_run_is_not_requeued(cluster):
    code, out, err = cluster["results"]["limit"]
    assert code == 1 and "2 jobs: 1 failed, 1 preempted" in err, err[-3000:]
    sweep = cluster["root"] / "limit" / "limit" / "digits" / "rf-lognorm_0.00_1.00"
    status = read_status(sweep / "mlp_lr0.001" / "seed8")
    assert status["state"] == "preempted" and "timed-out too many times" in status["requeue"], status
    assert _restarts(status["slurm_job"]) == 0
    assert "timed-out too many times" in err  # the sweep's summary
    nan = read_status(sweep / "mlp_lr1e+30" / "seed8")
    assert nan["state"] == "failed" and "NonFiniteLossError" in nan["reason"] and _restarts(nan["slurm_job"]) == 0
    assert _sacct(nan["slurm_job"])[nan["slurm_job"]] == "COMPLETED"  # the job ended; SLURM has nothing to retry


def test_scancel_stops_the_job_without_requeue_and_the_sweep_ends(cluster):
    job = cluster["cancelled"]
    assert job, "the cancel job never reached a checkpoint"
    code, out, err = cluster["results"]["cancel"]
    assert code == 1 and "1 cancelled" in err, err[-3000:]
    run = cluster["root"] / "cancel" / "cancel" / "digits" / "rf-lognorm_0.00_1.00" / "mlp" / "seed7"
    status = read_status(run)
    assert status["state"] == "cancelled" and status["slurm_job"] == job, status
    assert _sacct(job).get(job, "").startswith("CANCELLED") and _restarts(job) == 0
    row = sweep_status(run.parents[3]).iloc[0]
    assert row["state"] == "cancelled" and row["slurm_job"] == job


def test_plain_sbatch_job_is_requeued_by_rfsweep(cluster):
    root = cluster["root"]
    run = root / "plain" / "plain" / "digits" / "rf-lognorm_0.00_1.00" / "mlp" / "seed0"
    status = read_status(run)
    log = cluster["plain_log"].read_text()
    assert status.get("state") == "done", log[-3000:]
    assert status["slurm_job"] == cluster["plain_job"] and status["restarts"] >= 1
    assert f"requeued {cluster['plain_job']}" in log
    ref = root / "reference" / "grid" / "digits" / "rf-lognorm_0.00_1.00" / "mlp" / "seed0"
    a, b = _weights(run), _weights(ref)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "outcome.json").read_text())["outcome"] == "done"
