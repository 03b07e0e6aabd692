"""A run killed with SIGKILL and started again with the same command ends with the same weights as an
uninterrupted run; SIGTERM / SIGUSR1 write a checkpoint and stop cleanly (SLURM pre-emption)."""

import signal
import time
from pathlib import Path

import pytest
import torch

from rfsweep import runfolder
from rfsweep.runfolder import read_status
from rfsweep.train.checkpoint_io import checkpoint_step, resume_checkpoint
from tests.helpers import popen_cli, run_cli, tiny

STEPS = 150


def _args(root: Path, extra=()) -> list[str]:
    return [*tiny(root, STEPS), "trainer.ckpt_every=10", "trainer.val_every=50", "trainer.deterministic=true", *extra]


def _last(root: Path) -> Path:
    """The newest complete checkpoint of the one run below `root` (`resume_checkpoint`); root/missing: none yet."""
    runs = [p.parent for p in (root / "runs").rglob(runfolder.CHECKPOINTS)]
    path = resume_checkpoint(runs[0])[0] if runs else None
    return path or root / "missing"


def _wait_for_step(proc, root: Path, step: int, timeout: float = 240) -> int:
    """Wait for a complete checkpoint (a file or FSDP's folder) of `step` or later; returns its step."""
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        path = _last(root)
        s = checkpoint_step(path) if path.exists() else -1
        if s >= step:
            return s
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


@pytest.mark.long
@pytest.mark.parametrize("extra", [(), ("trainer.shift=3.0",), ("ema=posthoc", "ema.snapshot_every=10"),
                                   ("ema=posthoc", "ema.snapshot_every=40", "trainer.val_every=30",
                                    "trainer.ckpt_every=40")],
                         ids=["plain", "shifted", "posthoc", "posthoc-best-step"])
def test_sigkill_then_same_command_matches_uninterrupted_run(tmp_path, extra):
    a, b = tmp_path / "a", tmp_path / "b"
    r = run_cli(_args(a, extra))
    assert r.returncode == 0, r.stderr[-3000:]
    proc = popen_cli(_args(b, extra))
    killed_at = _wait_for_step(proc, b, 20)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_at < STEPS and read_status(_last(b).parent.parent).get("state") == "running"
    r = run_cli(_args(b, extra))
    assert r.returncode == 0, r.stderr[-3000:]
    ca, cb = (torch.load(_last(x), weights_only=True) for x in (a, b))
    assert ca["global_step"] == cb["global_step"] == STEPS
    for k, v in ca["state_dict"].items():
        assert torch.equal(v, cb["state_dict"][k]), k
    for sa, sb in zip(ca["optimizer_states"][0]["state"].values(), cb["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    if "ema=posthoc" in extra:  # the post-hoc EMAs (in the state dict above) and every snapshot, bit for bit
        from rfsweep.train.posthoc_ema import read_snapshot, snapshot_steps

        assert any(k.startswith("phema.1.") for k in ca["state_dict"])
        sa, sb = (snapshot_steps(_last(x).parent / "posthoc") for x in (a, b))
        every = int(next(e for e in extra if e.startswith("ema.snapshot_every=")).split("=")[1])
        assert sorted(sa) == sorted(sb) and set(range(every, STEPS + 1, every)) | {STEPS} <= set(sa)
        from safetensors import safe_open

        with safe_open(str(_last(b).parent / "best.safetensors"), framework="pt") as f:
            assert int(f.metadata()["step"]) in sb  # the evaluated step has its snapshot (its own, off the cadence)
        for step in sa:
            ea, eb = read_snapshot(sa[step])[1], read_snapshot(sb[step])[1]
            assert all(torch.equal(ea[s][k], eb[s][k]) for s in ea for k in ea[s]), step


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2])
def test_preemption_signal_writes_checkpoint_and_resumes(tmp_path, sig):
    proc = popen_cli(_args(tmp_path))
    seen = _wait_for_step(proc, tmp_path, 10)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3 and "pre-empted" in out, err[-3000:]
    run = _last(tmp_path).parent.parent
    status = read_status(run)
    assert status["state"] == "preempted" and status["signal"] == sig.name
    step = torch.load(_last(tmp_path), weights_only=True)["global_step"]
    assert seen <= step == status["step"] < STEPS
    r = run_cli(_args(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(_last(tmp_path), weights_only=True)["global_step"] == STEPS


def test_stop_signal_outside_slurm_checkpoints_without_requeue(tmp_path):
    """submitit's signal (USR2) outside SLURM: the checkpoint is written and the run stops; nothing is requeued.
    (Under SLURM, the requeue through submitit and through a plain sbatch script is tested on a real one-node SLURM:
    tests/cluster, `make test-cluster`.)"""
    proc = popen_cli(_args(tmp_path))
    _wait_for_step(proc, tmp_path, 10)
    proc.send_signal(signal.SIGUSR2)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-3000:]
    status = read_status(_last(tmp_path).parent.parent)
    assert status["state"] == "preempted" and status["signal"] == "SIGUSR2" and status["stage"] == "training"
    assert status["requeue"] == "not requeued: SIGUSR2 outside SLURM" and "not requeued" in out
