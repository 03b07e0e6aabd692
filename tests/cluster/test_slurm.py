"""Sweeps and jobs on a real one-node SLURM (`make test-cluster`: scripts/slurm_local.sh starts munged, MariaDB,
slurmdbd, slurmctld and slurmd on this machine; 2 CPUs, so a job of two tasks is a two-rank job over gloo).

Every job is pre-empted at a chosen point of its work, not after a wall time, so the tests hold on a machine of any
speed: SLURM's own time limit sends the pre-emption signal (`slurm_tools.preempt_by_time_limit` freezes the job
until SLURM's 30-second time-limit check has sent it), or, where a test needs it, one rank's process gets it alone.
Everything is submitted at once (the jobs queue on the two CPUs) and followed by one thread per job:

- a 2 variants x 2 datasets grid through `hydra/launcher=slurm` (submitit's job array): two of its jobs are
  pre-empted by their time limit after their first checkpoint and requeued once; every job ends with weights
  bit-identical to the same job run without interruption (a local sweep); a relaunch submits nothing;
- a job with `max_num_timeout=0`: pre-empted once, not requeued, recorded as pre-empted; one whose loss diverges;
- a job cancelled with `scancel` while it trains: not requeued, recorded as cancelled, the sweep does not hang;
- a plain sbatch script (`--signal=B:USR1@120 --requeue`, no submitit): rfsweep requeues it itself;
- two-rank jobs through `hydra/launcher=slurm` (two tasks): DDP, first pre-empted by a signal to rank 1 alone, then
  by its time limit during its evaluation (the next launch evaluates on rank 0 alone); FSDP, first pre-empted by a
  signal to rank 0 alone, then by its time limit while training. Each ends with the weights, `best.safetensors` and
  validation rows of the same two-rank job run without interruption (DDP exactly, FSDP within the FSDP tests'
  tolerance) and with one W&B run, opened by rank 0 only;
- two-rank plain sbatch jobs (`srun`, two tasks) refused on rank 0 (missing evaluator weights; a lease held by a
  live process): every rank ends within 60 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.__main__ import main as analysis_main
from analysis.status import sweep_status
from rfsweep.runfolder import read_outcome, read_status
from rfsweep.train.checkpoint_io import resume_checkpoint
from rfsweep.wandb_env import run_id
from tests.cluster import slurm_tools as st
from tests.helpers import ROOT, _env, popen_cli
from tests.wandb_files import offline_runs, read_run

pytestmark = pytest.mark.cluster

VARIANTS = '"rf/lognorm(0.00, 1.00)","eps/linear"'
RF = "rf-lognorm_0.00_1.00"
STEPS, FIRST = 300, 100  # steps of a job; its first checkpoint (and validation), where the tests pre-empt it
DELAY = 120  # --signal=...@DELAY: slurm_tools.preempt_by_time_limit needs >= 120 s
PREEMPTED = (("digits", RF), ("shapes", "eps-linear"))  # the grid's jobs pre-empted by their time limit
DEADLINE = 1500  # seconds for everything; this machine takes about a third of it
SLURM = ["hydra/launcher=slurm", f"hydra.launcher.timeout_min={st.LONG_LIMIT_MIN}",
         f"hydra.launcher.signal_delay_s={DELAY}", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=3", "hydra.launcher.partition=debug"]
TWO = ["trainer.devices=2", "hydra.launcher.tasks_per_node=2", "hydra.launcher.mem_gb=6"]
EVAL = ["eval=embedded", "eval.n_samples=32", "eval.batch_size=16", "eval.weights=[ema]",
        "eval.settings=[[5,5.0],[25,5.0]]"]
LONG_EVAL = ["eval=embedded", "eval.n_samples=64", "eval.batch_size=8", "eval.weights=[ema,raw]",
             "eval.settings=[[25,5.0],[25,1.0],[10,5.0]]"]


def common(root: Path, steps: int = STEPS) -> list[str]:
    return ["backbone=mlp", "logger=csv", "conditioning=hash", f"trainer.max_steps={steps}",
            f"trainer.ckpt_every={FIRST}", f"trainer.val_every={FIRST}", "trainer.n_val=64", "trainer.batch_size=32",
            "trainer.warmup_steps=50", "trainer.threads=1", "sampler.n_grid=8", "sampler.steps=5",
            f"paths.cache={root}/cache"]


def grid(root: Path, where: str, evaluate: bool = True) -> list[str]:
    return [*common(root), "-m", f"formulation.variant={VARIANTS}", "data=digits,shapes", "name=grid",
            *(EVAL if evaluate else ["eval=none"]), f"paths.sweeps={root}/{where}"]


def ranks(root: Path, where: str, strategies: str, evaluation: list[str]) -> list[str]:
    """Two-rank jobs, one per strategy (`backbone.label` names it in the run folder), with the default logger (CSV
    and W&B, offline here)."""
    return [*common(root), "logger=default", 'formulation.variant="rf/lognorm(0.00, 1.00)"', "data=digits",
            f"trainer.strategy={strategies}", "backbone.label=mlp_${trainer.strategy}", "trainer.devices=2",
            "name=ranks", *evaluation, f"paths.sweeps={root}/{where}", f"paths.runs={root}/{where}"]


def run_of(sweeps: Path, name: str, dataset: str = "digits", variant: str = RF, seed: int = 0,
           backbone: str = "mlp") -> Path:
    return sweeps / name / dataset / variant / backbone / f"seed{seed}"


def ckpt_step(run: Path) -> int:
    """The step of the run's last complete checkpoint (a file, or FSDP's folder); -1 while there is none."""
    try:
        path, step = resume_checkpoint(run)
    except Exception:  # being written, or none reads yet
        return -1
    return step if path is not None else -1


def wait_for(what: str, ok, until: float, every: float = 0.2):
    while time.time() < until:
        value = ok()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not seen before the deadline")


def job_of(run: Path, until: float, restarts: int = 0) -> str:
    """The SLURM job training `run` (rank 0's status.json), once it runs its launch number `restarts`."""
    def running():
        s = read_status(run)
        return s.get("slurm_job") if s.get("state") == "running" and s.get("restarts", 0) >= restarts else None
    return wait_for(f"{run} running (restart {restarts})", running, until)


def pids_when(job: str, n: int, until: float) -> dict[int, int]:
    return wait_for(f"job {job}'s {n} task(s)", lambda: (lambda p: p if len(p) >= n else None)(st.task_pids(job)),
                    until)


def sbatch(script: Path, body: str, header: str) -> str:
    script.write_text(f"#!/bin/bash\n{header}\ncd {ROOT}\n{body}\n")
    r = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def quoted(args: list[str]) -> str:
    return " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)


class Scenario(threading.Thread):
    """One job's script of pre-emptions, run beside the others; `events` says what happened when."""

    def __init__(self, name: str, steps, until: float):
        super().__init__(name=name, daemon=True)
        self.steps, self.until, self.events, self.error = steps, until, [], None
        self.t0 = time.time()

    def note(self, what: str) -> None:
        self.events.append(f"{time.time() - self.t0:6.1f} s  {what}")

    def run(self) -> None:
        try:
            self.steps(self)
        except Exception:
            self.error = traceback.format_exc()


def _grid_job(root: Path, dataset: str, variant: str):
    run = run_of(root / "slurm", "grid", dataset, variant)

    def steps(sc: Scenario):
        job = job_of(run, sc.until)
        wait_for(f"{run} first checkpoint", lambda: ckpt_step(run) >= FIRST, sc.until)
        waited = st.preempt_by_time_limit(job, DELAY, signal.SIGUSR2)
        sc.note(f"job {job} at step {ckpt_step(run)}: SLURM's time-limit signal after {waited:.1f} s")
        st.restore_limit_after_requeue(job, 0)
    return steps


def _limit_job(root: Path):
    run = run_of(root / "limit", "limit", seed=8, backbone="mlp_lr0.001")

    def steps(sc: Scenario):
        job = job_of(run, sc.until)
        wait_for(f"{run} first checkpoint", lambda: ckpt_step(run) >= FIRST, sc.until)
        waited = st.preempt_by_time_limit(job, DELAY, signal.SIGUSR2)
        sc.note(f"job {job}: SLURM's time-limit signal after {waited:.1f} s (max_num_timeout=0: not requeued)")
    return steps


def _cancel_job(root: Path, out: dict):
    run = run_of(root / "limit", "limit", seed=7, backbone="mlp_lr0.001")

    def steps(sc: Scenario):
        job = job_of(run, sc.until)
        wait_for(f"{run} first checkpoint", lambda: ckpt_step(run) >= FIRST, sc.until)
        subprocess.run(["scancel", job], check=True, timeout=30)
        out["cancelled"] = job
        sc.note(f"scancel {job}")
    return steps


def _plain_job(root: Path, out: dict):
    run = run_of(root / "plain", "plain")

    def steps(sc: Scenario):
        args = [*common(root), 'formulation.variant="rf/lognorm(0.00, 1.00)"', "data=digits", "eval=none",
                "name=plain", f"paths.runs={root}/plain"]
        sweeps_submitted(sc.until, 2)  # before the two-rank jobs: it fills a CPU they leave free
        # exec: the batch step is rfsweep itself, which gets the B: signal
        job = sbatch(root / "plain.sh", f"exec {sys.executable} -m rfsweep {quoted(args)}",
                     f"#SBATCH --time={st.LONG_LIMIT_MIN} --signal=B:USR1@{DELAY} --requeue --open-mode=append -c 1 "
                     f"--mem=3G -J plain -o {root / 'plain.log'}")
        out["plain_job"] = job
        wait_for(f"{run} first checkpoint", lambda: ckpt_step(run) >= FIRST, sc.until)
        waited = st.preempt_by_time_limit(job, DELAY, signal.SIGUSR1)
        sc.note(f"plain job {job}: SLURM's time-limit signal (USR1 to the batch step) after {waited:.1f} s")
        st.restore_limit_after_requeue(job, 0)
        wait_for(f"{run} done", lambda: read_status(run).get("state") == "done", sc.until, every=1)
    return steps


def _ddp_job(root: Path):
    run = run_of(root / "ranks", "ranks", backbone="mlp_ddp")

    def steps(sc: Scenario):
        job = job_of(run, sc.until)
        pids = pids_when(job, 2, sc.until)
        wait_for(f"{run} first checkpoint", lambda: ckpt_step(run) >= FIRST, sc.until)
        os.kill(pids[1], signal.SIGUSR2)  # SLURM's signal reaching rank 1 first (alone)
        sc.note(f"DDP job {job} at step {ckpt_step(run)}: USR2 to rank 1 (pid {pids[1]}) alone")
        job_of(run, sc.until, restarts=1)
        wait_for(f"{run} evaluating", lambda: (run / "samples.png").is_file(), sc.until, every=0.1)
        waited = st.preempt_by_time_limit(job, DELAY, signal.SIGUSR2)
        sc.note(f"DDP job {job} evaluating: SLURM's time-limit signal after {waited:.1f} s")
        st.restore_limit_after_requeue(job, 1)
    return steps


def _fsdp_job(root: Path):
    run = run_of(root / "ranks", "ranks", backbone="mlp_fsdp")

    def steps(sc: Scenario):
        job = job_of(run, sc.until)
        pids = pids_when(job, 2, sc.until)
        wait_for(f"{run} first checkpoint", lambda: ckpt_step(run) >= FIRST, sc.until)
        os.kill(pids[0], signal.SIGUSR2)  # rank 0 alone
        sc.note(f"FSDP job {job} at step {ckpt_step(run)}: USR2 to rank 0 (pid {pids[0]}) alone")
        job_of(run, sc.until, restarts=1)
        first = ckpt_step(run)
        wait_for(f"{run} a checkpoint of its second launch", lambda: ckpt_step(run) > first, sc.until)
        waited = st.preempt_by_time_limit(job, DELAY, signal.SIGUSR2)
        sc.note(f"FSDP job {job} at step {ckpt_step(run)}: SLURM's time-limit signal after {waited:.1f} s")
        st.restore_limit_after_requeue(job, 1)
    return steps


def sweeps_submitted(until: float, n: int = 3) -> None:
    """Jobs submitted with sbatch by a scenario wait for the sweeps' jobs (the queue's order is its priority)."""
    seen: set[str] = set()

    def enough() -> bool:
        seen.update(j.split("_")[0] for j in st.run("squeue", "-h", "-n", "__main__", "-o", "%i").split())
        return len(seen) >= n
    wait_for(f"{n} sweeps submitted", enough, until, every=0.5)


def _refused_jobs(root: Path, out: dict):
    """Two-rank plain sbatch jobs that rank 0 refuses: missing evaluator weights, a lease held by a live process."""
    def steps(sc: Scenario):
        sweeps_submitted(sc.until, 2)
        for kind in ("weights", "lease"):
            args = [*common(root), 'formulation.variant="rf/lognorm(0.00, 1.00)"', "data=digits", "trainer.devices=2",
                    f"name=refused_{kind}", f"paths.runs={root}/refused", *EVAL]
            if kind == "weights":
                args.append(f"+eval.evaluator_args.weights={root}/no-such-weights.safetensors")
            else:
                run = run_of(root / "refused", f"refused_{kind}")
                run.mkdir(parents=True)
                (run / "lease.json").write_text(json.dumps({  # this test process: alive for the whole test
                    "token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                    "heartbeat": time.time()}))
                args.append("cluster.lease_timeout_s=3600")
            out[kind] = sbatch(root / f"refused_{kind}.sh", f"srun {sys.executable} -m rfsweep {quoted(args)}",
                               # --overcommit: the two tasks share one CPU (they only start and stop)
                               f"#SBATCH --time=5 -n 2 -c 1 --overcommit --mem=4G -J refused_{kind} "
                               f"-o {root / f'refused_{kind}.log'}")
            sc.note(f"refused_{kind}: job {out[kind]}")
    return steps


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode:
        pytest.fail("no SLURM answers here: run `bash scripts/slurm_local.sh up` (make test-cluster does)")
    root = tmp_path_factory.mktemp("slurm")
    start = time.time()
    until = start + DEADLINE
    # the one-rank jobs first (they fill both CPUs, and each one's requeue hold lets another run), then the two-rank
    # jobs, then the plain sbatch jobs (each scenario waits for the sweeps' jobs: the queue's order is its priority)
    procs = {
        # a job cancelled while it trains (seed 7), a long job that may not be requeued (seed 8), two whose loss
        # diverges at once (lr 1e30)
        "limit": popen_cli([*common(root, 100000), "-m", "seed=7,8", "data=digits", "eval=none", "name=limit",
                            "optimizer.lr=1e-3,1e30", "backbone.label=mlp_lr${optimizer.lr}", "trainer.grad_clip=null",
                            f"paths.sweeps={root}/limit", *SLURM, "hydra.launcher.max_num_timeout=0"]),
        "grid": popen_cli([*grid(root, "slurm"), *SLURM, "hydra.launcher.max_num_timeout=5"]),
    }
    sweeps_submitted(until, 2)
    procs["ranks"] = popen_cli([*ranks(root, "ranks", "ddp,fsdp", EVAL), "-m", *SLURM, *TWO,
                                "hydra.launcher.max_num_timeout=5"])
    out: dict = {}
    scenarios = [Scenario(f"grid {d} {v}", _grid_job(root, d, v), until) for d, v in PREEMPTED]
    scenarios += [Scenario("ddp", _ddp_job(root), until), Scenario("fsdp", _fsdp_job(root), until),
                  Scenario("limit", _limit_job(root), until), Scenario("cancel", _cancel_job(root, out), until),
                  Scenario("plain", _plain_job(root, out), until), Scenario("refused", _refused_jobs(root, out), until)]
    for sc in scenarios:
        sc.start()
    # the uninterrupted references, locally at the lowest CPU priority (one rank, then two ranks through Lightning's
    # own launcher): they run mostly while SLURM's requeued jobs wait out their hold
    procs["reference"] = popen_cli(grid(root, "reference", evaluate=False), nice=19)
    procs["reference_ranks"] = popen_cli(ranks(root, "reference", "ddp", ["eval=none"]), nice=19)
    results = {}
    for name, p in procs.items():
        try:
            o, e = p.communicate(timeout=max(until - time.time(), 1))
        except subprocess.TimeoutExpired:
            p.kill()
            o, e = p.communicate()
            e += f"\n[test] {name} still running at the deadline"
        results[name] = (p.returncode, o, e)
    for sc in scenarios:
        sc.join(timeout=max(until - time.time(), 1))
    for kind in ("weights", "lease"):  # the refused jobs end on their own
        if kind in out:
            wait_for(f"refused job {out[kind]} ended", lambda job=out[kind]: st.job_field(job, "JobState") in (
                "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), until, every=1)
    print(f"[test] cluster fixture: {time.time() - start:.0f} s", file=sys.stderr)
    for sc in scenarios:
        for e in sc.events:
            print(f"[test] {sc.name}: {e}", file=sys.stderr)
    for f in sorted(root.rglob("status.json")):  # how often each job was pre-empted, how long a stop took
        s = json.loads(f.read_text())
        print(f"[test] {f.parent.relative_to(root)}: {s['state']} restarts={s.get('restarts')}", file=sys.stderr)
    for log in sorted(root.rglob("*.out")) + sorted(root.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if "pre-empted at step" in line:
                print(f"[test] {log.name}: {line.strip()}", file=sys.stderr)
    yield {"root": root, "results": results, "scenarios": {sc.name: sc for sc in scenarios}, **out}
    for job in subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True,
                              timeout=30).stdout.split():  # a failed test leaves nothing in the queue
        subprocess.run(["scancel", job], timeout=30)


def _scenario_ok(cluster, name: str) -> None:
    sc = cluster["scenarios"][name]
    assert sc.error is None, sc.error


def _state(run: Path) -> dict:
    return torch.load(resume_checkpoint(run)[0], weights_only=True)["state_dict"]


def _ranks_state(run: Path) -> dict:
    last, _ = resume_checkpoint(run)
    if not last.is_dir():
        return _state(run)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    full = run / "full.pt"
    dcp_to_torch_save(last, full)
    return torch.load(full, weights_only=True)["state_dict"]


def _best(run: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(run / "checkpoints" / "best.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _val_rows(run: Path) -> pd.DataFrame:
    from rfsweep.runfolder import metrics_files

    df = pd.concat([pd.read_csv(p) for p in metrics_files(run) if p.is_file()])
    cols = sorted(c for c in df.columns if c.startswith("val/"))
    return df.dropna(subset=cols, how="all")[["step", *cols]].sort_values("step").reset_index(drop=True)


def _log(status: dict) -> str:
    return Path(status["log"]).read_text() + Path(status["log"]).with_suffix(".err").read_text()


def test_grid_is_preempted_by_slurm_requeued_and_ends_bit_identical(cluster):
    root = cluster["root"]
    for sc in cluster["scenarios"]:
        if sc.startswith("grid"):
            _scenario_ok(cluster, sc)
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
        preempted = (run.parts[-4], run.parts[-3]) in PREEMPTED
        assert int(st.job_field(status["slurm_job"], "Restarts")) == preempted, status  # pre-empted once, requeued once
        assert read_outcome(run)["outcome"] == "done"
        ref = root / "reference" / "grid" / run.relative_to(sweep)
        a, b = _state(run), _state(ref)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run
        pd.testing.assert_frame_equal(_val_rows(run), _val_rows(ref))  # a pre-emption changes no validation
        assert _best(run)[1] == _best(ref)[1]  # the same evaluated step
        log = _log(status)
        assert log.count("pre-empted at step") == preempted == log.count("requeued by submitit"), log[-3000:]
    table = sweep_status(sweep)
    assert list(table["state"]) == ["done"] * 4 and table["restarts"].sum() == 2 and table["slurm_job"].notna().all()
    assert analysis_main(["rank-table", "--results", str(sweep), "--out", str(root / "tables")]) == 0
    again = subprocess.run([sys.executable, "-m", "rfsweep", *grid(root, "slurm"), *SLURM], cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=600)  # relaunched: nothing left to submit
    assert again.returncode == 0 and "4 jobs: 4 skipped" in again.stderr, again.stderr[-3000:]
    said = again.stdout + again.stderr
    assert said.count("not submitted (skipped: finished earlier)") == 4 and "Submitting" not in said


def test_max_num_timeout_is_respected_a_diverged_run_is_not_requeued_and_scancel_stops(cluster):
    for name in ("limit", "cancel"):
        _scenario_ok(cluster, name)
    code, out, err = cluster["results"]["limit"]
    assert code == 1 and "4 jobs: 1 cancelled, 2 failed, 1 preempted" in err, err[-3000:]
    root = cluster["root"] / "limit"
    status = read_status(run_of(root, "limit", seed=8, backbone="mlp_lr0.001"))
    assert status["state"] == "preempted" and "timed-out too many times" in status["requeue"], status
    assert int(st.job_field(status["slurm_job"], "Restarts")) == 0
    assert "timed-out too many times" in err  # the sweep's summary
    for seed in (7, 8):
        nan = read_status(run_of(root, "limit", seed=seed, backbone="mlp_lr1e+30"))
        assert nan["state"] == "failed" and "NonFiniteLossError" in nan["reason"]
        assert int(st.job_field(nan["slurm_job"], "Restarts")) == 0
        assert st.job_field(nan["slurm_job"], "JobState") == "COMPLETED"  # the job ended; nothing to retry
    # scancel: not requeued, recorded as cancelled, the sweep ended
    job, run = cluster["cancelled"], run_of(root, "limit", seed=7, backbone="mlp_lr0.001")
    status = read_status(run)
    assert status["state"] == "cancelled" and status["slurm_job"] == job, status
    assert st.job_field(job, "JobState") == "CANCELLED" and int(st.job_field(job, "Restarts")) == 0
    rows = sweep_status(root / "limit").set_index("run")
    assert rows.loc[str(run.relative_to(root / "limit")), "state"] == "cancelled"


def test_plain_sbatch_job_is_requeued_by_rfsweep(cluster):
    _scenario_ok(cluster, "plain")
    root = cluster["root"]
    run = run_of(root / "plain", "plain")
    status = read_status(run)
    log = (root / "plain.log").read_text()
    assert status.get("state") == "done", log[-3000:]
    assert status["slurm_job"] == cluster["plain_job"] and status["restarts"] == 1
    assert log.count(f"requeued {cluster['plain_job']}") == 1
    ref = run_of(root / "reference", "grid")
    a, b = _state(run), _state(ref)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "outcome.json").read_text())["outcome"] == "done"


def _two_rank_job(cluster, strategy: str, tol: float) -> Path:
    """Checks common to the two-rank jobs; returns the run folder."""
    _scenario_ok(cluster, strategy)
    root = cluster["root"]
    code, out, err = cluster["results"]["ranks"]
    assert code == 0 and "2 jobs: 2 done" in err, err[-4000:]
    ref_code, _, ref_err = cluster["results"]["reference_ranks"]
    assert ref_code == 0, ref_err[-3000:]
    run = run_of(root / "ranks", "ranks", backbone=f"mlp_{strategy}")
    ref = run_of(root / "reference", "ranks", backbone="mlp_ddp")
    status = read_status(run)
    assert status["state"] == "done" and int(st.job_field(status["slurm_job"], "Restarts")) == 2, status
    a, b = _ranks_state(run), _ranks_state(ref)
    assert a.keys() == b.keys()
    for k in a:  # DDP: bit-identical; FSDP: its reduce-scatter sums in another order (tests/test_fsdp.py)
        err_k = ((a[k] - b[k]).abs().max() / (b[k].abs().max() + 1e-12)).item()
        assert err_k <= tol, (k, err_k)
    (wa, ma), (wb, mb) = _best(run), _best(ref)
    assert ma["step"] == mb["step"] and wa.keys() == wb.keys()
    assert all(((wa[k] - wb[k]).abs().max() / (wb[k].abs().max() + 1e-12)).item() <= tol for k in wa)
    va, vb = _val_rows(run), _val_rows(ref)
    assert len(va) == len(vb) == STEPS // FIRST  # each scheduled validation once: none repeated, none skipped
    pd.testing.assert_frame_equal(va, vb, rtol=max(tol, 1e-12) * 10, atol=0)
    runs = [read_run(f) for f in offline_runs(run)]  # W&B: rank 0 alone opened it, once per launch, one id
    assert {r.id for r in runs} == {run_id(run)} and len(runs) == 3, [(r.id, r.job_type) for r in runs]
    assert sorted(r.exit_code for r in runs) == [0, 0, 0]
    return run


def test_two_rank_ddp_job_preempted_on_rank_1_then_by_its_time_limit_while_evaluating(cluster):
    run = _two_rank_job(cluster, "ddp", tol=0.0)
    logs = sorted(Path(read_status(run)["log"]).parent.glob("*_log.out"))
    text = {p.name: p.read_text() for p in logs}
    said = "\n".join(text.values())
    assert said.count("pre-empted at step") == 2 and "(evaluation)" in said, said[-4000:]
    # the third launch: rank 1 leaves at once, rank 0 finishes the evaluation alone
    results = pd.read_csv(run / "results.csv")
    assert len(results[results["weights"] != "real"]) == 2
    third = [t for name, t in text.items() if "_1_" in name]  # rank 1's log: no evaluation, no W&B
    assert third and "done:" not in "".join(third)


def test_two_rank_fsdp_job_preempted_on_rank_0_then_by_its_time_limit(cluster):
    _two_rank_job(cluster, "fsdp", tol=1e-4)


def test_a_refusal_on_rank_0_ends_every_rank(cluster):
    _scenario_ok(cluster, "refused")
    root = cluster["root"]
    for kind, said, outcome in (("weights", "no-such-weights", "failed"), ("lease", "is being trained by", "refused")):
        job = cluster[kind]
        log = (root / f"refused_{kind}.log").read_text()
        assert said in log and "did not start" in log, log[-3000:]  # rank 0's reason, and rank 1 told of it
        record = read_outcome(run_of(root / "refused", f"refused_{kind}"))
        assert record["outcome"] == outcome and said in record["reason"], record
        # every rank ended (the job did) within 60 s of rank 0's refusal
        end = datetime.fromisoformat(st.job_field(job, "EndTime")).timestamp()
        assert end - record["time"] < 60, (kind, end - record["time"], log[-2000:])
        print(f"[test] refused_{kind}: the job ended {end - record['time']:.1f} s after rank 0 refused",
              file=sys.stderr)
