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
    """Rank 0 decides that the run is trained and tells rank 1 at the agreement: rank 1 leaves without building
    anything or writing anything; rank 0 evaluates alone."""
    args = [*tiny(tmp_path, 4), "eval=embedded", "eval.n_samples=8", "eval.batch_size=8", "eval.weights=[ema]",
            "eval.settings=[[2,1.0]]", "trainer.devices=2"]
    r = run_cli([*args, "trainer.devices=1", "stage=train"])
    assert r.returncode == 0, r.stderr[-3000:]
    run = next((tmp_path / "runs").rglob("status.json")).parent
    procs = {rank: subprocess.Popen([sys.executable, "-m", "rfsweep", *args, "stage=evaluate"], cwd=ROOT,
                                    env={**_env(), **_slurm(rank, job="99")}, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for rank in (1, 0)}  # a requeued two-rank SLURM job, evaluating
    out1, err1 = procs[1].communicate(timeout=300)
    out0, err0 = procs[0].communicate(timeout=300)
    assert procs[1].returncode == 0 and procs[0].returncode == 0, (err1[-3000:], err0[-3000:])
    assert read_status(run)["state"] == "done"
    assert "done:" not in out1 and "done:" in out0 and "Initializing distributed" not in err1 + err0  # no group
    assert "1.done" in {p.name for p in (run / ".ranks").rglob("*")}  # rank 1 took rank 0's decision and left


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
    from rfsweep.cluster.signals import signal_name

    guard = __import__("rfsweep.cluster.signals", fromlist=["PreemptionGuard"]).PreemptionGuard()
    assert guard.code() == 0
    guard.note(signal_name(int(signal.SIGUSR2)))
    assert guard.received == "SIGUSR2" and guard.code() == int(signal.SIGUSR2)
    assert guard.stop_requested()
    assert guard.hand_back().requeue.startswith("not requeued")  # no KeyError for any name


def test_a_rank_that_gave_up_waiting_takes_back_its_ready(tmp_path):
    """Rank 0 said ready, then gave up (its start timeout): rank 1, arriving later, must not enter the process group
    alone (it would wait there for the group's timeout)."""
    from rfsweep.cluster.ranks import Launch, RanksDisagree

    rank0 = Launch(tmp_path, 2, 0.2, env=_slurm(0), poll_s=0.02)
    with pytest.raises(RanksDisagree, match="did not answer"):
        rank0.agree({"train": True, "resume": None})
    rank0.fail("ranks [1] of this launch did not answer")  # what run_job does with the error
    with pytest.raises(RanksDisagree, match="rank 0 of this launch did not start"):
        Launch(tmp_path, 2, 30, env=_slurm(1), poll_s=0.02).agree()


def test_rank_0_decides_and_every_rank_follows(tmp_path):
    from rfsweep.cluster.ranks import Launch

    ranks = [Launch(tmp_path, 2, 30, env=_slurm(r), poll_s=0.02) for r in range(2)]
    got = []
    t = threading.Thread(target=lambda: got.append(ranks[1].agree({"resume": "rank 1's own view"})))
    t.start()
    decided = ranks[0].agree({"train": True, "resume": "checkpoints/step-00000040.ckpt"})
    t.join(5)
    assert got == [decided] == [{"train": True, "resume": "checkpoints/step-00000040.ckpt"}]
    for r in ranks:
        r.done()


def test_a_peer_on_another_host_is_dead_once_its_heartbeat_stops_changing_for_peer_timeout_s(tmp_path):
    """Across hosts no pid can be asked: a rank's heartbeat is a count in its `.alive` file, and a peer is dead once
    this rank has seen it unchanged for peer_timeout_s by its own clock (no other machine's clock, no cached mtime)."""
    from rfsweep.cluster.ranks import Launch

    ranks = [Launch(tmp_path, 2, 30, env=_slurm(r), poll_s=0.02, peer_timeout_s=0.5) for r in range(2)]
    t = threading.Thread(target=ranks[1].agree)
    t.start()
    ranks[0].agree()
    t.join(5)
    for r in ranks:
        r.close()  # their watchdogs stop beating: rank 1's heartbeat is driven by hand below
    time.sleep(1.2)
    ranks[0].peers[1]["host"] = "node-b"  # as if rank 1 ran on another node
    alive = ranks[0].folder / "1.alive"
    os.utime(alive, (0, 0))  # an mtime from another clock says nothing
    assert ranks[0].dead_peers() == {}  # first seen now
    ranks[1]._touch()
    time.sleep(0.4)
    assert ranks[0].dead_peers() == {}  # it changed: alive
    time.sleep(0.7)
    assert "gave no sign of life for" in ranks[0].dead_peers()[1]
    ranks[1].done()
    assert ranks[0].dead_peers() == {}  # a rank that said it is done is not dead


_WATCHED = """
import os, signal, subprocess, sys, time, json
sys.path.insert(0, {root!r})
from rfsweep.cluster.ranks import Launch
run, mode = {run!r}, {mode!r}
peer = subprocess.Popen(["sleep", "60"])
folder = os.path.join(run, ".ranks", "slurm-7.0.0")
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, "1.json"), "w") as f:
    json.dump({{"rank": 1, "ok": True, "reason": "", "host": os.uname().nodename, "pid": peer.pid,
               "time": time.time()}}, f)
env = {{"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"}}
lost = lambda reason, requeue: print("recorded:", reason, "requeue" if requeue else "no requeue", flush=True)
launch = Launch(run, 2, 30, env=env, poll_s=0.05, on_peer_lost=lost)
launch.agree()
print("agreed", flush=True)
if mode == "kill":
    peer.kill(); peer.wait()
else:
    launch.recording()  # this rank records a failure every rank raised
    with open(os.path.join(folder, "1.failed"), "w") as f:
        json.dump({{"rank": 1, "ok": False, "reason": "NonFiniteLossError", "host": "x", "pid": 1, "time": 0}}, f)
    peer.kill(); peer.wait()
t0 = time.time()
time.sleep(20)
print("not ended", flush=True)
"""


def test_a_rank_killed_without_a_word_ends_the_others_within_seconds(tmp_path):
    """SIGKILL, the OOM killer, a segfault: the dead rank writes nothing; its pid is gone. The watchdog of rank 0
    (here its only peer is a `sleep` killed with SIGKILL) records it, asks for a requeue, and ends the process."""
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", _WATCHED.format(root=str(ROOT), run=str(tmp_path), mode="kill")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "recorded: rank 1 (pid" in r.stdout and "died without a word requeue" in r.stdout, \
        (r.stdout, r.stderr[-2000:])
    assert "not ended" not in r.stdout and time.time() - t0 < 15


def test_a_rank_recording_a_failure_every_rank_raised_is_not_ended_by_its_watchdog(tmp_path):
    r = subprocess.run([sys.executable, "-c", _WATCHED.format(root=str(ROOT), run=str(tmp_path), mode="record")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "not ended" in r.stdout and "recorded" not in r.stdout, (r.stdout, r.stderr[-2000:])


def test_whether_the_final_weights_are_saved_is_rank_0s_decision(tmp_path):
    """Under FSDP saving the best weights is a collective: a rank that looked at the file system on its own (rank 1
    does not see rank 0's best.safetensors yet, NFS) would enter it alone. Rank 0's answer is broadcast."""
    from types import SimpleNamespace

    from rfsweep.train.callbacks import BestWeights

    saved = []
    best = BestWeights(tmp_path / "missing-here.safetensors")  # rank 1's view: not there
    best.save = lambda trainer, module: saved.append(trainer.global_step)
    rank0_sees_it = SimpleNamespace(broadcast=lambda obj, src=0: True)  # rank 0's view, broadcast: it is there
    trainer = SimpleNamespace(global_step=8, max_steps=8, is_global_zero=False, strategy=rank0_sees_it)
    best.on_train_end(trainer, None)
    assert saved == []
    trainer.strategy = SimpleNamespace(broadcast=lambda obj, src=0: False)
    best.on_train_end(trainer, None)
    assert saved == [8]


def test_the_process_group_waits_collective_timeout_s_not_lightnings_30_minutes():
    from datetime import timedelta

    from omegaconf import OmegaConf

    from rfsweep.run.fit import _strategy

    for strategy in ("ddp", "fsdp"):
        tr = OmegaConf.create({"strategy": strategy, "devices": 2, "num_nodes": 1})
        assert _strategy(tr, 90)._timeout == timedelta(seconds=90)


def test_training_ends_the_process_group_before_rank_0_evaluates_alone(tmp_path):
    """Rank 0 evaluates for hours after training while the other ranks have left: no process group may wait on them."""
    import torch.distributed as dist

    from rfsweep.cluster.signals import PreemptionGuard
    from rfsweep.run.builders import build_module
    from rfsweep.run.fit import fit

    cfg = compose_cfg([*tiny(tmp_path, 2)], run_dir=str(tmp_path / "run"))
    module, data = build_module(cfg, train=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        assert fit(cfg, module, data, tmp_path / "run", PreemptionGuard()) == 2
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
