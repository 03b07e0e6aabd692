"""A job on a cluster, without the cluster: a failure stays in its job under every launcher (the sweep ends with a
summary and exit status 1), one trainer per run folder (the lease), a resume refused when the config changed, the
cost estimate of a dry run. The same on a real SLURM: tests/cluster (`make test-cluster`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest
import torch

from rfsweep.cluster.lease import Lease, LeaseHeld, read_lease
from rfsweep.runfolder import config_changes, read_outcome, read_status
from tests.helpers import compose_cfg, popen_cli, run_cli, tiny

NAN = ["optimizer.lr=1e-3,1e30", "backbone.label=mlp_lr${optimizer.lr}", "trainer.grad_clip=null",
       "trainer.warmup_steps=1"]


def mlp(tmp, steps: int) -> list[str]:
    """`tiny` with the demo MLP (whose label the sweeps below tie to the learning rate)."""
    drop = ("backbone.depth", "backbone.width", "backbone.heads")
    return [o.replace("backbone=mmdit", "backbone=mlp") for o in tiny(tmp, steps) if not o.startswith(drop)]


@pytest.mark.long
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=local2"],
                                      ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"]],
                         ids=["basic", "joblib", "submitit_local"])
def test_a_failed_job_does_not_stop_the_sweep(tmp_path, launcher):
    """The job with a diverging learning rate fails (non-finite loss), the other runs to the end, the sweep prints
    one summary naming the failed run and its reason and exits 1."""
    r = run_cli([*mlp(tmp_path, steps=12), "-m", *NAN, "name=nan", *launcher], timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    sweep = tmp_path / "multirun" / "nan"
    good, bad = (sweep / "shapes" / "rf-lognorm_0.00_1.00" / f"mlp_lr{lr}" / "seed0" for lr in ("0.001", "1e+30"))
    assert read_status(good)["state"] == "done" and read_outcome(good)["outcome"] == "done"
    assert read_status(bad)["state"] == "failed" and "NonFiniteLossError" in read_status(bad)["reason"]
    summary = r.stderr[r.stderr.index("sweep "):]
    assert "2 jobs: 1 done, 1 failed" in summary and "mlp_lr1e+30/seed0" in summary
    assert "training loss is" in summary and "--resubmit" in summary
    assert read_outcome(good)["launch"] == read_outcome(bad)["launch"]  # both from this launch


def test_invalid_job_refuses_the_whole_sweep_before_any_job(tmp_path):
    r = run_cli([*tiny(tmp_path), "-m", 'formulation.variant="rf/mode(5.00)",rf', "name=bad"], timeout=300)
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "rf/mode(5.00)" in errors[0] and "no job started" in errors[0]
    assert not (tmp_path / "multirun" / "bad").exists() or not list((tmp_path / "multirun").rglob("status.json"))


@pytest.mark.long
def test_resubmit_relaunches_only_what_is_left(tmp_path, capfd):
    from analysis.__main__ import main as analysis_main

    r = run_cli([*mlp(tmp_path, steps=12), "-m", *NAN, "name=nan"], timeout=600)
    assert r.returncode == 1
    sweep = tmp_path / "multirun" / "nan"
    done = sweep / "shapes" / "rf-lognorm_0.00_1.00" / "mlp_lr0.001" / "seed0"
    stamp = (done / "status.json").stat().st_mtime_ns
    capfd.readouterr()
    assert analysis_main(["status", str(sweep), "--resubmit"]) == 1  # the diverging run fails again
    out, err = capfd.readouterr()
    assert "resubmitting 1 runs (failed)" in out and "python" in out and "-m rfsweep -m" in out, out
    assert "2 jobs: 1 failed, 1 skipped" in err, err[-2000:]
    assert (done / "status.json").stat().st_mtime_ns == stamp  # the finished run is not touched


# -- one trainer per run folder -------------------------------------------------------------------------------------
def test_lease_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    run = tmp_path / "run"
    with Lease(run, timeout_s=60):
        held = read_lease(run)
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(LeaseHeld, match=f"host {socket.gethostname()} pid {os.getpid()}"):
            Lease(run, timeout_s=60).acquire()
    assert read_lease(run) is None  # released
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / "lease.json").write_text(json.dumps({"token": "x", "host": socket.gethostname(), "pid": dead.pid,
                                                "heartbeat": time.time()}))
    with Lease(run, timeout_s=60):  # same host, dead pid: stale
        assert read_lease(run)["pid"] == os.getpid()
    other = {"token": "y", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    (run / "lease.json").write_text(json.dumps(other))
    with pytest.raises(LeaseHeld, match="host elsewhere pid 1"):  # another host, fresh heartbeat: alive
        Lease(run, timeout_s=60).acquire()
    (run / "lease.json").write_text(json.dumps({**other, "heartbeat": time.time() - 61}))
    with Lease(run, timeout_s=60):  # another host, heartbeat older than the timeout: stale
        pass


def test_lease_heartbeat_is_renewed(tmp_path):
    with Lease(tmp_path, timeout_s=10):
        first = read_lease(tmp_path)["heartbeat"]
        time.sleep(1.6)
        assert read_lease(tmp_path)["heartbeat"] > first


@pytest.mark.long
def test_second_process_on_a_running_folder_refuses_with_one_line(tmp_path):
    args = [*tiny(tmp_path, steps=100000), "trainer.ckpt_every=50", "trainer.val_every=5000"]
    first = popen_cli(args)
    run = None
    for _ in range(600):
        hits = list((tmp_path / "runs").rglob("checkpoints/step-*.ckpt"))
        if hits:
            run = hits[0].parent.parent
            break
        time.sleep(0.1)
    assert run is not None and read_lease(run)["pid"] == first.pid, first.communicate()[1][-2000:]
    second = run_cli(args)
    errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1, second.stderr[-2000:]
    assert f"pid {first.pid}" in errors[0] and "being trained by" in errors[0]
    assert read_outcome(run)["outcome"] == "refused" and first.poll() is None  # the holder trains on
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 3, err[-2000:]
    assert read_status(run)["state"] == "preempted" and read_lease(run) is None  # released on the way out


# -- a resume must match the run's config ------------------------------------------------------------------------------
@pytest.mark.long
def test_resume_with_a_changed_result_key_is_refused(tmp_path):
    r = run_cli(tiny(tmp_path, steps=4))
    assert r.returncode == 0, r.stderr[-2000:]
    run = next((tmp_path / "runs").rglob("status.json")).parent
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != "outcome.json"}
    r = run_cli([*tiny(tmp_path, steps=4), "optimizer.lr=2e-3", "seed=0"])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "optimizer.lr (0.001 -> 0.002)" in errors[0], r.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in files} == files  # nothing already written was touched
    r = run_cli([*tiny(tmp_path, steps=4), "trainer.num_workers=1", "logger.csv=false", "trainer.threads=2"])
    assert r.returncode == 0 and "skip:" in r.stdout  # keys that do not change the result may differ


def test_config_changes_names_only_result_keys():
    a = {"trainer": {"lr": 1e-3, "num_workers": 0, "max_steps": 10}, "seed": 0, "paths": {"runs": "a"},
         "eval": {"n_samples": 4}, "backbone": {"depth": 2}}
    b = {"trainer": {"lr": 1e-3, "num_workers": 8, "max_steps": 20}, "seed": 1, "paths": {"runs": "b"},
         "eval": {"n_samples": 8}, "backbone": {"depth": 3, "qk_norm": True}}
    assert config_changes(a, b) == ["backbone.depth", "backbone.qk_norm", "seed"]


# -- what a job costs --------------------------------------------------------------------------------------------------
def test_dry_run_estimates_gpu_hours_from_the_backbone_flops():
    from rfsweep.backbones.flops import mmdit_train_flops
    from rfsweep.run.plan import dry_run_line, job_flops

    cfg = compose_cfg(["backbone=mmdit", "backbone.depth=2", "backbone.width=64", "trainer.max_steps=1000",
                       "trainer.batch_size=64", "eval=none", "cluster.tflops_per_gpu=100"])
    f = job_flops(cfg)
    per_sample = mmdit_train_flops(2, 64, 3, 2, 384, 16, 16)  # shapes 8x8 pixels, patch 2, MiniLM 16 x 384
    assert f["train_flops"] == pytest.approx(per_sample * 64 * 1000) and f["eval_flops"] == 0
    line = dry_run_line(cfg)
    assert f"gpu_hours={f['train_flops'] / 100e12 / 3600:.3g}" in line and "params=" in line
    mlp_cfg = compose_cfg(["backbone=mlp", "trainer.max_steps=10", "trainer.batch_size=2"])
    mlp = job_flops(mlp_cfg)  # counted by torch's FLOP counter: every matmul weight, 6 FLOPs per sample at least
    from rfsweep.run.builders import build_backbone

    weights = sum(m.weight.numel() for m in build_backbone(mlp_cfg).modules() if isinstance(m, torch.nn.Linear))
    # 2 FLOPs per weight forward, 2 for the weight's gradient, 2 for the input's (not for the first layer's input)
    assert 4 * weights <= mlp["train_flops_per_sample"] <= 6.1 * weights
    assert mlp["train_flops"] == mlp["train_flops_per_sample"] * 20
    assert mlp["eval_flops"] > 0


def test_the_preemption_signals_include_submitits_configured_one(monkeypatch):
    from rfsweep.cluster.signals import PreemptionGuard, preemption_signals

    assert set(preemption_signals()) == {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "WINCH")
    assert signal.SIGWINCH in preemption_signals()
    calls = []
    before = signal.signal(signal.SIGWINCH, lambda s, f: calls.append(s))
    try:
        with PreemptionGuard() as guard:
            signal.raise_signal(signal.SIGWINCH)
            assert guard.received == "SIGWINCH" and not calls  # noted, not acted on
            back = guard.hand_back()  # the handler before the guard's (submitit's) gets the signal, once
            assert calls == [signal.SIGWINCH] and back.requeue.startswith("not requeued: the SIGWINCH handler")
    finally:
        signal.signal(signal.SIGWINCH, before)
