"""Two-rank jobs that must never hang and never half-write, on the real one-node SLURM (`make test-cluster`; two
tasks of one CPU each, gloo). Plain sbatch jobs (`srun`, two tasks, `--requeue`): rfsweep itself hands a job back.

- `kill -9` of rank 1, and separately of rank 0, after a checkpoint: the other rank's watchdog notices the pid gone,
  the job ends within 60 s, is requeued, resumes and ends with the weights of an uninterrupted two-rank run, with one
  W&B run id; before the kill of rank 1, the lease file is made unreadable for a few heartbeats: the holder never
  writes over it and keeps the run;
- a SIGTERM to both ranks as soon as they agreed (before training starts): recorded as a pre-emption, never as
  Lightning's `SIGTERMException`; then a crash mid-checkpoint is left behind (a `.partial` folder of a later step and
  a damaged newest checkpoint): the next launch resumes from the last complete checkpoint, never from step 0, says so
  in one line, and ends bit-identical to the uninterrupted run;
- rank 1 starting 15 s after rank 0 with `cluster.start_timeout_s=10`: rank 0 gives up and takes back its ready,
  rank 1 learns it at once: the job ends, nobody waits in the process group.

Every scenario is placed by steps and checkpoints, never by wall time. Times to end and to resume are printed
(README "Robustness").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from rfsweep.cluster.lease import alive
from rfsweep.runfolder import read_outcome, read_status
from rfsweep.wandb_env import run_id
from tests.cluster import slurm_tools as st
from tests.cluster.test_slurm import Scenario, ckpt_step, common, pids_when, quoted, run_of, sbatch, wait_for
from tests.helpers import popen_cli
from tests.wandb_files import offline_runs, read_run

pytestmark = pytest.mark.cluster

STEPS, EVERY = 200, 50
TASKS = f"--time={st.LONG_LIMIT_MIN} -N 1 --ntasks-per-node=2 -c 1 --mem=6G --open-mode=append"  # not --ntasks
DEADLINE = 600


def _args(root: Path, where: str, extra=()) -> list[str]:
    return [*[a for a in common(root, STEPS) if not a.startswith(("trainer.ckpt_every", "trainer.val_every"))],
            f"trainer.ckpt_every={EVERY}", f"trainer.val_every={2 * EVERY}", "logger=default",
            'formulation.variant="rf/lognorm(0.00, 1.00)"', "data=digits", "trainer.devices=2", "name=ranks",
            "eval=none", f"paths.runs={root}/{where}", *extra]


def _submit(root: Path, where: str, extra=(), prefix: str = "") -> str:
    cmd = f"{sys.executable} -m rfsweep {quoted(_args(root, where, extra))}"
    body = f"srun bash -c {quoted([prefix + 'exec ' + cmd])}" if prefix else f"srun {cmd}"
    return sbatch(root / f"{where}.sh", body, f"#SBATCH {TASKS} --requeue -J {where} -o {root / f'{where}.log'}")


def _run(root: Path, where: str) -> Path:
    return run_of(root / where, "ranks")


def _state_of(job: str) -> str:
    return st.job_field(job, "JobState") or "?"


def _ended_and_requeued(sc: Scenario, job: str, survivor: int, killed_at: float, until: float) -> None:
    """The surviving rank's process ends, and the job is back in the queue with a higher restart count."""
    wait_for(f"rank pid {survivor} ended", lambda: not alive(survivor), until, every=0.1)
    sc.out["ended_s"] = time.time() - killed_at
    wait_for(f"job {job} requeued", lambda: int(st.job_field(job, "Restarts") or 0) >= 1, until, every=0.2)
    sc.note(f"job {job}: the other rank ended {sc.out['ended_s']:.1f} s after the kill, requeued "
            f"{time.time() - killed_at:.1f} s after it")


def _kill(root: Path, where: str, rank: int, torn_lease: bool = False):
    def steps(sc: Scenario):
        job = sc.out["job"] = _submit(root, where, ["cluster.lease_timeout_s=10"] if torn_lease else [])
        run = _run(root, where)
        pids = pids_when(job, 2, sc.until)
        wait_for(f"{run} checkpoint {EVERY}", lambda: ckpt_step(run) >= EVERY, sc.until)
        if torn_lease:  # unreadable for ~3 heartbeats (one per second): nobody writes over it, the holder keeps it
            lease = run / "lease.json"
            held = lease.read_text()
            lease.write_text('{"token": "torn')
            time.sleep(3)
            sc.out["torn_kept"] = lease.read_text() == '{"token": "torn'
            tmp = run / ".lease.restore"
            tmp.write_text(held)
            os.replace(tmp, lease)
            sc.note(f"lease unreadable for 3 s; left as it was: {sc.out['torn_kept']}")
        step = ckpt_step(run)
        killed_at = time.time()
        os.kill(pids[rank], signal.SIGKILL)
        sc.note(f"job {job} at checkpoint {step}: kill -9 of rank {rank} (pid {pids[rank]})")
        _ended_and_requeued(sc, job, pids[1 - rank], killed_at, sc.until)
        wait_for(f"job {job} done", lambda: _state_of(job) in ("COMPLETED", "FAILED", "CANCELLED"), sc.until)
        sc.note(f"job {job} {_state_of(job)}; resumed and finished {time.time() - killed_at:.1f} s after the kill")
        sc.out["resumed_s"] = time.time() - killed_at
    return steps


def _sigterm_then_crash(root: Path, where: str):
    def steps(sc: Scenario):
        job = sc.out["job"] = _submit(root, where)
        run = _run(root, where)
        pids = pids_when(job, 2, sc.until)
        ranks = run / ".ranks"
        wait_for("both ranks agreed", lambda: len(list(ranks.glob("*/[01].alive"))) >= 1, sc.until, every=0.05)
        for p in pids.values():
            os.kill(p, signal.SIGTERM)
        sc.note(f"job {job}: SIGTERM to both ranks right after their agreement (step {ckpt_step(run)})")
        wait_for(f"job {job} ended", lambda: _state_of(job) in ("COMPLETED", "FAILED", "CANCELLED"), sc.until)
        sc.out["first"] = dict(read_status(run))
        ckpts = sorted((run / "checkpoints").glob("step-*.ckpt"))
        last = ckpts[-1]
        at = ckpt_step(run)
        sc.out["complete_at"] = at
        # a crash mid-checkpoint: a later step's folder half-written, and a newest checkpoint that is damaged
        (last.parent / f"step-{at + 2:08d}.ckpt.partial").mkdir()
        (last.parent / f"step-{at + 1:08d}.ckpt").write_bytes(b"PK\x03\x04 torn")
        job2 = sc.out["job2"] = _submit_again(root, where)
        wait_for(f"job {job2} done", lambda: _state_of(job2) in ("COMPLETED", "FAILED", "CANCELLED"), sc.until)
        sc.note(f"job {job2} {_state_of(job2)} after the crash left behind")
    return steps


def _submit_again(root: Path, where: str) -> str:
    cmd = f"{sys.executable} -m rfsweep {quoted(_args(root, where))}"
    return sbatch(root / f"{where}_again.sh", f"srun {cmd}",
                  f"#SBATCH {TASKS} -J {where}_again -o {root / f'{where}_again.log'}")


def _late_rank(root: Path, where: str):
    def steps(sc: Scenario):
        job = sc.out["job"] = _submit(root, where, ["cluster.start_timeout_s=10"],
                                      prefix='if [ "$SLURM_PROCID" = 1 ]; then sleep 15; fi; ')
        wait_for(f"job {job} ended", lambda: _state_of(job) in ("COMPLETED", "FAILED", "CANCELLED"), sc.until)
        start = datetime.fromisoformat(st.job_field(job, "StartTime")).timestamp()
        end = datetime.fromisoformat(st.job_field(job, "EndTime")).timestamp()
        sc.out["ran_s"] = end - start
        sc.note(f"job {job} {_state_of(job)} after {end - start:.0f} s")
    return steps


class _Scenario(Scenario):
    def __init__(self, name, steps, until):
        super().__init__(name, steps, until)
        self.out: dict = {}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    if subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode:
        pytest.fail("no SLURM answers here: run `bash scripts/slurm_local.sh up` (make test-cluster does)")
    root = tmp_path_factory.mktemp("ranks")
    start = time.time()
    until = start + DEADLINE
    scenarios = {name: _Scenario(name, steps, until) for name, steps in (
        ("kill1", _kill(root, "kill1", 1, torn_lease=True)), ("kill0", _kill(root, "kill0", 0)),
        ("sigterm", _sigterm_then_crash(root, "sigterm")), ("late", _late_rank(root, "late")))}
    for sc in scenarios.values():
        sc.start()
        time.sleep(1)  # submitted in this order: the queue runs them one after the other (each takes both CPUs)
    reference = popen_cli(_args(root, "reference", ["logger=csv"]), nice=19)  # Lightning's own launcher, two ranks
    out, err = reference.communicate(timeout=max(until - time.time(), 1))
    for sc in scenarios.values():
        sc.join(timeout=max(until - time.time(), 1))
    print(f"[test] two-rank scenarios: {time.time() - start:.0f} s", file=sys.stderr)
    for sc in scenarios.values():
        for e in sc.events:
            print(f"[test] {sc.name}: {e}", file=sys.stderr)
    yield {"root": root, "scenarios": scenarios, "reference": (reference.returncode, err)}
    for job in subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, timeout=30).stdout.split():
        subprocess.run(["scancel", job], timeout=30)


def _weights(run: Path) -> dict:
    from rfsweep.train.checkpoint_io import resume_checkpoint

    path, step = resume_checkpoint(run)
    assert step == STEPS, (run, step)
    return torch.load(path, weights_only=True)["state_dict"]


def _same_as_reference(jobs, run: Path) -> None:
    code, err = jobs["reference"]
    assert code == 0, err[-3000:]
    a, b = _weights(run), _weights(_run(jobs["root"], "reference"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _scenario(jobs, name: str) -> _Scenario:
    sc = jobs["scenarios"][name]
    assert sc.error is None, sc.error + "\n" + "\n".join(sc.events)
    return sc


@pytest.mark.parametrize("rank", [1, 0])
def test_a_rank_killed_with_sigkill_ends_the_job_within_60_s_and_it_resumes_bit_identically(jobs, rank):
    sc = _scenario(jobs, f"kill{rank}")
    run, job = _run(jobs["root"], f"kill{rank}"), sc.out["job"]
    log = (jobs["root"] / f"kill{rank}.log").read_text()
    assert sc.out["ended_s"] < 60, log[-3000:]
    assert f"rank {rank} (pid" in log and "died without a word" in log and f"requeued {job}" in log, log[-3000:]
    status = read_status(run)
    assert status["state"] == "done" and status["restarts"] == 1, status
    assert read_outcome(run)["outcome"] == "done"
    _same_as_reference(jobs, run)
    ids = [f.name.rsplit("-", 1)[1] for f in offline_runs(run)]  # one W&B run id, opened once per launch by rank 0
    assert ids == [run_id(run)] * 2, ids
    assert read_run(offline_runs(run)[-1]).exit_code == 0
    print(f"[test] kill -9 of rank {rank}: the other rank ended {sc.out['ended_s']:.1f} s after it, the job was "
          f"requeued and finished "
          f"{sc.out['resumed_s']:.0f} s after the kill", file=sys.stderr)


def test_an_unreadable_lease_is_never_written_over_and_its_holder_keeps_the_run(jobs):
    sc = _scenario(jobs, "kill1")
    assert sc.out["torn_kept"]
    log = (jobs["root"] / "kill1.log").read_text()
    assert "taken over" not in log, log[-3000:]


def test_a_sigterm_before_training_is_a_preemption_and_a_crash_mid_checkpoint_resumes_from_the_last_complete(jobs):
    sc = _scenario(jobs, "sigterm")
    first = sc.out["first"]
    log = (jobs["root"] / "sigterm.log").read_text()
    assert first["state"] == "preempted" and first["signal"] == "SIGTERM", (first, log[-3000:])
    assert "SIGTERMException" not in log
    assert sc.out["complete_at"] >= 1
    again = (jobs["root"] / "sigterm_again.log").read_text()
    assert "damaged checkpoint" in again and f"step-{sc.out['complete_at']:08d}.ckpt" in again, again[-3000:]
    run = _run(jobs["root"], "sigterm")
    assert read_status(run)["state"] == "done"
    _same_as_reference(jobs, run)
    assert not list((run / "checkpoints").glob("*.partial"))


def test_a_rank_starting_after_the_start_timeout_ends_with_the_others(jobs):
    sc = _scenario(jobs, "late")
    log = (jobs["root"] / "late.log").read_text()
    assert "did not answer within cluster.start_timeout_s=10" in log and "did not start" in log, log[-3000:]
    assert sc.out["ran_s"] < 60, log[-3000:]
    print(f"[test] rank 1 15 s late, start timeout 10 s: the job ended after {sc.out['ran_s']:.0f} s",
          file=sys.stderr)
