"""Several ranks of one job, without SLURM (the one-node SLURM tests are in tests/cluster): the ranks agree before
training and end together; a signal to any rank stops all and is handed back as that signal; W&B is opened by rank
0 alone; a trained run's other ranks leave at once; a run that failed while evaluating stays trained; a lost lease
stops training without another write; checkpoints load onto the CPU; the FSDP backbone is whole on rank 0 only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import torch

from rfsweep.runfolder import read_status
from tests.helpers import ROOT, _env, compose_cfg, popen_cli, run_cli, tiny
from tests.test_resume import _last, _wait_for_step
from tests.wandb_files import offline_runs, read_run


def _slurm(rank: int, world: int = 2, job: str = "4242", restart: int = 0) -> dict:
    return {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(world), "SLURM_JOB_ID": job, "SLURM_STEP_ID": "0",
            "SLURM_RESTART_COUNT": str(restart)}


def test_a_launch_is_the_slurm_step_or_torchrun_and_nothing_else():
    from rfsweep.cluster.ranks import outside_launch

    assert outside_launch(2, _slurm(1)) == ("slurm-4242.0.0", 1)
    assert outside_launch(2, _slurm(0, restart=3))[0] == "slurm-4242.0.3"  # a requeued job: a new launch
    assert outside_launch(2, {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "RANK": "1"}) == ("torchrun-x.0", 1)
    assert outside_launch(1, _slurm(0, world=1)) is None  # one process
    assert outside_launch(2, {}) is None  # Lightning's own launcher starts the others from rank 0's fit
    assert outside_launch(2, _slurm(0, world=4)) is None  # SLURM's tasks are not this job's ranks


def test_ranks_agree_or_learn_of_a_refusal_at_once(tmp_path):
    from rfsweep.cluster.ranks import Launch, RanksDisagree

    ranks = [Launch(tmp_path, 2, 30, env=_slurm(r), poll_s=0.02) for r in range(2)]
    done = []
    t = threading.Thread(target=lambda: done.append(ranks[1].agree() or "agreed"))
    t.start()
    time.sleep(0.2)
    assert not done  # rank 1 waits for rank 0
    ranks[0].agree()
    t.join(5)
    assert done == ["agreed"]
    refused = [Launch(tmp_path, 2, 30, env=_slurm(r, restart=1), poll_s=0.02) for r in range(2)]
    refused[0].fail("the lease is held")
    t0 = time.time()
    with pytest.raises(RanksDisagree, match="rank 0 of this launch did not start: the lease is held"):
        refused[1].agree()
    assert time.time() - t0 < 2
    late = Launch(tmp_path, 2, 0.3, env=_slurm(1, restart=2), poll_s=0.02)
    with pytest.raises(RanksDisagree, match=r"ranks \[0\] .* did not answer within cluster.start_timeout_s=0.3"):
        late.agree()


def test_a_rank_failing_after_the_agreement_ends_the_others(tmp_path):
    """A rank blocked in a collective cannot notice a failed peer: its watchdog ends the process."""
    code = ("import sys, time; sys.path.insert(0, %r); from rfsweep.cluster.ranks import Launch; "
            "env = {'SLURM_PROCID': '1', 'SLURM_NTASKS': '2', 'SLURM_JOB_ID': '7', 'SLURM_STEP_ID': '0'}; "
            "l = Launch(%r, 2, 30, env=env, poll_s=0.05); l.agree(); print('agreed', flush=True); time.sleep(60)"
            % (str(ROOT), str(tmp_path)))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from rfsweep.cluster.ranks import Launch

    rank0 = Launch(tmp_path, 2, 30, env={**_slurm(0, job="7")}, poll_s=0.05)
    rank0.agree()
    time.sleep(0.5)
    rank0.fail("RuntimeError: disk full")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "agreed" in out and "rank 0 of this launch failed (RuntimeError: disk full)" in err


def _ddp(root, steps=400, extra=()):
    return [*tiny(root, steps), "trainer.devices=2", "trainer.ckpt_every=10", "trainer.val_every=50",
            *extra]


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def test_a_signal_to_rank_1_stops_both_and_rank_0_hands_it_back_with_one_wandb_run(tmp_path):
    proc = popen_cli([*_ddp(tmp_path), "logger=default"])
    _wait_for_step(proc, tmp_path, 10)
    (rank1,) = [c for c in _children(proc.pid) if "rfsweep" in open(f"/proc/{c}/cmdline").read()]
    os.kill(rank1, signal.SIGUSR1)  # rank 1 alone (Lightning's launcher started it): rank 0 learns it at the step
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 3, err[-3000:]
    run = _last(tmp_path).parent.parent
    status = read_status(run)
    assert status["state"] == "preempted" and status["signal"] == "SIGUSR1", status
    assert status["requeue"] == "not requeued: SIGUSR1 outside SLURM"
    runs = [read_run(f) for f in offline_runs(run)]  # rank 0 alone opened W&B
    assert len(runs) == 1 and runs[0].summary.get("rfsweep/outcome") == "preempted", [r.summary for r in runs]


def test_a_trained_runs_other_ranks_leave_at_once_and_rank_0_evaluates_alone(tmp_path):
    args = [*tiny(tmp_path, 4), "eval=embedded", "eval.n_samples=8", "eval.batch_size=8", "eval.weights=[ema]",
            "eval.settings=[[2,1.0]]", "trainer.devices=2"]
    r = run_cli([*args, "trainer.devices=1", "stage=train"])
    assert r.returncode == 0, r.stderr[-3000:]
    run = next((tmp_path / "runs").rglob("status.json")).parent
    before = sorted(p.name for p in run.iterdir())
    env = {**_env(), **_slurm(1, job="99")}  # rank 1 of a requeued two-rank SLURM job, evaluating
    rank1 = subprocess.run([sys.executable, "-m", "rfsweep", *args, "stage=evaluate"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rank1.returncode == 0, rank1.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == before and read_status(run)["state"] == "trained"


def test_a_run_that_failed_while_evaluating_stays_trained(tmp_path, monkeypatch):
    import rfsweep.run.eval_stage
    from rfsweep.run.job import run_job

    args = [*tiny(tmp_path, 4), "eval=embedded", "eval.n_samples=8", "eval.batch_size=8", "eval.weights=[ema]",
            "eval.settings=[[2,1.0]]"]
    run = tmp_path / "run"
    assert run_job(compose_cfg([*args, "stage=train"], run_dir=str(run))) == 0
    monkeypatch.setattr(rfsweep.run.eval_stage, "evaluate_run", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("the evaluator's node failed")))
    assert run_job(compose_cfg(args, run_dir=str(run))) == 1
    status = read_status(run)
    assert status["state"] == "failed" and status["stage"] == "evaluation", status
    monkeypatch.undo()
    assert run_job(compose_cfg([*args, "stage=evaluate"], run_dir=str(run))) == 0  # evaluated, not refused
    assert read_status(run)["state"] == "done"


@pytest.mark.parametrize("logger", ["csv", "default"])
def test_a_lost_lease_stops_training_without_another_write(tmp_path, logger):
    """Another process takes the run folder over (it thought this one dead). The heartbeat would notice only at its
    next beat (lease_timeout_s / 10 = 300 s here); every write asks the lease file first, so the job ends at its next
    checkpoint step, that checkpoint unwritten, and nothing else is written after the one write under way. Its W&B
    run (offline here) ends without an outcome: the new holder resumes that run and records its own."""
    args = [o for o in tiny(tmp_path, 100000) if o != "logger=csv"] + [f"logger={logger}"]
    proc = popen_cli([*args, "trainer.ckpt_every=10", "cluster.lease_timeout_s=3000"])
    _wait_for_step(proc, tmp_path, 10)
    run = _last(tmp_path).parent.parent
    before = torch.load(_last(tmp_path), weights_only=True)["global_step"]
    other = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
    tmp = run / ".lease.taken"
    tmp.write_text(json.dumps(other))
    os.replace(tmp, run / "lease.json")
    taken = time.time()
    out, err = proc.communicate(timeout=120)  # long before the heartbeat's 300 s
    assert proc.returncode == 2 and "taken over" in err and "without writing" in err, err[-3000:]
    assert json.loads((run / "lease.json").read_text())["token"] == other["token"]
    after = torch.load(_last(tmp_path), weights_only=True)["global_step"]
    assert after <= before + 2 * 10, (before, after)  # at most the write that was under way, and the one read before
    assert not (run / "outcome.json").exists()
    assert read_status(run).get("state") == "running"  # not rewritten as failed or pre-empted
    assert (run / "metrics.csv").stat().st_mtime < taken + 1  # its last rows were not flushed into the folder
    if logger == "default":
        (folder,) = offline_runs(run)
        wb = read_run(folder)
        assert wb.exit_code == 0 and "rfsweep/outcome" not in wb.summary, wb.summary


def test_checkpoints_load_onto_the_cpu_and_running_out_of_memory_is_not_corruption(tmp_path, monkeypatch):
    import rfsweep.train.checkpoint_io as io

    path = tmp_path / "x.ckpt"
    torch.save({"w": torch.ones(2)}, path)
    seen = []
    load = torch.load
    monkeypatch.setattr(io.torch, "load", lambda *a, **k: seen.append(k.get("map_location")) or load(*a, **k))
    io.AtomicCheckpointIO().load_checkpoint(path, map_location=None)  # what Lightning passes on resume
    assert seen == ["cpu"]

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 77.00 GiB")

    monkeypatch.setattr(io.torch, "load", oom)
    with pytest.raises(torch.OutOfMemoryError):
        io.load_checkpoint(path)
    monkeypatch.undo()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(io.CheckpointError, match="corrupt"):
        io.load_checkpoint(path)


def test_under_fsdp_rank_0_alone_builds_the_whole_backbone(tmp_path, monkeypatch):
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from rfsweep.run.builders import build_model

    cfg = compose_cfg([*tiny(tmp_path), "trainer.strategy=fsdp", "trainer.devices=2"], run_dir=str(tmp_path / "r"))
    on_meta = {}
    for rank in (0, 1):
        monkeypatch.setattr(rank_zero_only, "rank", rank)
        m = build_model(cfg, train=True)
        on_meta[rank] = ({p.is_meta for p in m.net.parameters()}, {p.is_meta for p in m.ema_net.parameters()})
    assert on_meta == {0: ({False}, {True}), 1: ({True}, {True})}  # no rank holds the whole model and its EMA
    whole = build_model(cfg)  # not for training (e.g. evaluation): whole, with its EMA
    assert not any(p.is_meta for p in (*whole.net.parameters(), *whole.ema_net.parameters()))


def test_a_stop_code_names_its_signal_for_the_other_ranks():
    from rfsweep.cluster.signals import LOST, signal_name

    guard = __import__("rfsweep.cluster.signals", fromlist=["PreemptionGuard"]).PreemptionGuard()
    assert guard.code() == 0
    guard.note(signal_name(int(signal.SIGUSR2)))
    assert guard.received == "SIGUSR2" and guard.code() == int(signal.SIGUSR2)
    guard.lose_lease("taken over")
    assert guard.code() == LOST and guard.stop_requested()
    assert guard.hand_back().requeue.startswith("not requeued")  # no KeyError for any name
