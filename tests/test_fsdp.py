"""Paper-scale training on CPUs (gloo): FSDP (trainer.strategy=fsdp, FSDP2 through Lightning's ModelParallelStrategy)
trains the weights one process trains, also across a pre-emption (sharded checkpoints, resumed exactly); gradient
accumulation keeps the global batch and its random draws, so k micro-batches give one big step's weights."""

from __future__ import annotations

import signal

import pytest
import torch

from rfsweep.runfolder import read_status
from rfsweep.train.checkpoint_io import resume_checkpoint
from tests.helpers import popen_cli, run_cli, tiny
from tests.test_ddp import _same_weights
from tests.test_resume import _wait_for_step


def _args(root, steps=8, extra=()):
    return [*tiny(root, steps), "formulation=edm", "trainer.ckpt_every=2", "backbone.depth=2", *extra]


def _run(root):
    return next((root / "runs").rglob("status.json")).parent


def _final(root) -> dict:
    """The final weights: the last checkpoint, a file (one process) or FSDP's sharded folder (read with torch's own
    converter from a distributed checkpoint to one file)."""
    last, _ = resume_checkpoint(_run(root))
    if last.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        dcp_to_torch_save(last, root / "full.pt")
        state = torch.load(root / "full.pt", weights_only=True)["state_dict"]
        step = torch.load(last / "meta.pt", weights_only=True)["global_step"]
        return {"state_dict": state, "global_step": step}
    return torch.load(last, weights_only=True)


@pytest.mark.long
def test_fsdp_on_two_processes_trains_the_weights_of_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    posthoc = ["ema=posthoc", "ema.snapshot_every=4"]
    assert run_cli(_args(one, extra=posthoc)).returncode == 0
    r = run_cli(_args(two, extra=["trainer.devices=2", "trainer.strategy=fsdp", *posthoc]))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _final(one), _final(two)
    assert a["global_step"] == b["global_step"] == 8 and a["state_dict"].keys() == b["state_dict"].keys()
    # FSDP reduce-scatters gradients (another summation order than one process's mean); Adam's normalisation
    # turns that rounding into ~3e-5 relative on near-zero biases: within 1e-4, not DDP's 1e-5
    _same_weights(a, b, tol=1e-4)
    run = _run(two)
    assert resume_checkpoint(run)[0].is_dir() and read_status(run)["state"] == "done"
    from safetensors import safe_open

    with safe_open(str(run / "checkpoints" / "best.safetensors"), framework="pt") as f:  # whole tensors, gathered
        kept = {k for k in a["state_dict"] if not k.startswith("phema.")}  # the post-hoc EMAs: in the snapshots
        assert set(f.keys()) == kept and all(f.get_tensor(k).shape == a["state_dict"][k].shape for k in f.keys())
    # the post-hoc EMA snapshots: each rank writes its shards; joined, they are one process's snapshots
    from rfsweep.train.posthoc_ema import read_snapshot, snapshot_steps

    shards = snapshot_steps(run / "checkpoints" / "posthoc")
    whole = snapshot_steps(_run(one) / "checkpoints" / "posthoc")
    assert sorted(shards) == sorted(whole) == [4, 8] and all(len(f) == 2 for f in shards.values())
    for step in whole:
        joined, single = read_snapshot(shards[step])[1], read_snapshot(whole[step])[1]
        for s in single:
            _same_weights({"state_dict": single[s]}, {"state_dict": joined[s]}, tol=1e-4)


@pytest.mark.long
def test_fsdp_resumes_a_preempted_run_exactly(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    extra = ["trainer.ckpt_every=10"]
    assert run_cli(_args(ref, steps=40, extra=extra)).returncode == 0
    fsdp = [*extra, "trainer.devices=2", "trainer.strategy=fsdp"]
    proc = popen_cli(_args(run, steps=40, extra=fsdp))
    _wait_for_step(proc, run, 10)  # a complete folder (its meta.pt and DCP's .metadata) of step >= 10
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 3, err[-3000:]
    status = read_status(_run(run))
    assert status["state"] == "preempted" and 10 <= status["step"] < 40
    r = run_cli(_args(run, steps=40, extra=fsdp))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _final(ref), _final(run)
    assert a["global_step"] == b["global_step"] == 40
    _same_weights(a, b, tol=1e-4)


def test_gradient_accumulation_is_one_big_step(tmp_path):
    one, acc = tmp_path / "one", tmp_path / "acc"
    assert run_cli(_args(one)).returncode == 0
    r = run_cli(_args(acc, extra=["trainer.accumulate_grad_batches=2"]))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _final(one), _final(acc)
    assert a["global_step"] == b["global_step"] == 8
    _same_weights(a, b, tol=1e-4)  # the same batch, draws and steps: only the summation order differs


def test_accumulation_must_split_the_global_batch(tmp_path):
    r = run_cli(_args(tmp_path, extra=["trainer.accumulate_grad_batches=3"]))
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "accumulate_grad_batches=3" in errors[0], r.stderr[-2000:]
