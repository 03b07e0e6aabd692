"""The run folder's lease, beyond tests/test_jobs.py: holders of one SLURM job (a second step is refused, an earlier
restart is taken over) and the heartbeat thread (a torn read, a removed file, a lease taken over by another)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rfsweep.cluster.lease as lease_mod
from rfsweep.cluster.lease import Lease, LeaseHeld, read_lease

REPO = Path(__file__).resolve().parents[1]
HOLD = """import sys
from rfsweep.cluster.lease import Lease
with Lease(sys.argv[1], 60):
    print("held", flush=True)
    sys.stdin.read()
"""  # holds the lease until its stdin closes


@pytest.fixture(autouse=True)
def _no_slurm(monkeypatch):
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_STEP_ID"):
        monkeypatch.delenv(var, raising=False)


def _slurm(monkeypatch, restarts: int, step: str) -> dict:
    env = {"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": str(restarts), "SLURM_STEP_ID": step}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def _replace(path: Path, record: dict) -> None:
    tmp = path.with_name(".other.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)  # atomic, as another holder writes it


def _until(cond, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_a_live_step_of_the_same_slurm_job_and_restart_is_not_taken_over(tmp_path, monkeypatch):
    env = {**os.environ, **_slurm(monkeypatch, restarts=1, step="0")}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        monkeypatch.setenv("SLURM_STEP_ID", "1")  # a second `srun ... &` of the same allocation
        with pytest.raises(LeaseHeld, match=f"pid {holder.pid}, SLURM job 4242 step 0 restart 1"):
            Lease(tmp_path, timeout_s=60).acquire()
        assert read_lease(tmp_path)["pid"] == holder.pid
    finally:
        holder.communicate("", timeout=10)
    assert read_lease(tmp_path) is None  # the holder released it


def test_a_lease_of_an_earlier_restart_of_the_same_job_is_taken_over(tmp_path, monkeypatch):
    _slurm(monkeypatch, restarts=2, step="0")
    before = {"token": "x", "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(),
              "slurm_job": "4242", "slurm_restarts": 1}  # its pid is alive (this one): SLURM ended it anyway
    (tmp_path / "lease.json").write_text(json.dumps(before))
    with Lease(tmp_path, timeout_s=60) as lease:
        assert read_lease(tmp_path) | {"heartbeat": 0} == {"token": lease.token, "host": socket.gethostname(),
                                                             "pid": os.getpid(), "heartbeat": 0, "slurm_job": "4242",
                                                             "slurm_restarts": 2, "slurm_step": "0"}
    (tmp_path / "lease.json").write_text(json.dumps({**before, "slurm_restarts": 2}))
    with pytest.raises(LeaseHeld, match="SLURM job 4242 restart 2"):  # the same restart and alive: held
        Lease(tmp_path, timeout_s=60).acquire()


def test_a_torn_read_does_not_stop_the_heartbeat(tmp_path, monkeypatch):
    reads = []

    def torn_once(run_dir):
        reads.append(run_dir)
        return {} if len(reads) == 1 else read_lease(run_dir)

    with Lease(tmp_path, timeout_s=1.0) as lease:  # a beat every 0.5 s
        monkeypatch.setattr(lease_mod, "read_lease", torn_once)
        assert _until(lambda: reads)
        first = read_lease(tmp_path)["heartbeat"]
        time.sleep(1.2)
        now = read_lease(tmp_path)
        assert now["heartbeat"] > first and now["token"] == lease.token and not lease.lost.is_set()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_lease_taken_over_sets_lost_calls_on_lost_once_and_stops_the_heartbeat(tmp_path, capfd):
    calls = []

    def on_lost(taken_by):
        calls.append(taken_by)
        raise RuntimeError("the callback fails")  # reported, not raised into the heartbeat thread

    other = {"token": "other", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    with Lease(tmp_path, timeout_s=1.0, on_lost=on_lost) as lease:
        assert not lease.lost.is_set() and lease.taken_by == {}
        _replace(tmp_path / "lease.json", other)
        assert lease.lost.wait(3)
        time.sleep(1.2)  # two more beats, had it not stopped
        assert read_lease(tmp_path) == other and lease.taken_by == other and calls == [other]
    assert read_lease(tmp_path) == other  # release leaves the new holder's lease
    err = capfd.readouterr().err
    assert f"lease: {tmp_path} was taken over by host elsewhere pid 1" in err and "the callback fails" in err


def test_a_removed_lease_file_is_recreated_by_the_heartbeat(tmp_path):
    with Lease(tmp_path, timeout_s=1.0) as lease:
        (tmp_path / "lease.json").unlink()
        assert _until(lambda: read_lease(tmp_path) is not None)
        assert read_lease(tmp_path)["token"] == lease.token and not lease.lost.is_set()
    assert read_lease(tmp_path) is None


def test_confirm_reads_the_lease_now_and_a_loss_is_reported_once(tmp_path):
    """`confirm` does not wait for the heartbeat (a beat every 300 s here): a takeover is seen at the next write."""
    calls = []
    other = {"token": "other", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    with Lease(tmp_path, timeout_s=3000.0, on_lost=calls.append) as lease:
        assert lease.confirm() and not lease.lost.is_set()
        _replace(tmp_path / "lease.json", other)
        assert not lease.confirm() and lease.lost.is_set() and calls == [other]
        assert not lease.confirm() and calls == [other]  # reported once
        lease._lose(other)  # the heartbeat finding it too
        assert calls == [other]
    assert read_lease(tmp_path) == other


def test_a_loss_found_by_confirm_stops_the_heartbeat(tmp_path):
    """Once `confirm` found another holder, the heartbeat (a beat every 0.5 s here) never renews nor re-creates the
    lease, even when the new holder's file is gone."""
    with Lease(tmp_path, timeout_s=1.0) as lease:
        _replace(tmp_path / "lease.json", {"token": "other", "host": "elsewhere", "pid": 1, "heartbeat": time.time()})
        assert not lease.confirm()
        (tmp_path / "lease.json").unlink()
        time.sleep(1.2)  # two beats
        assert read_lease(tmp_path) is None


def test_a_takeover_found_only_at_release_is_reported(tmp_path):
    """Taken over after the last beat and the last write: the release says so (on_lost) and leaves the new lease."""
    calls = []
    other = {"token": "other", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    with Lease(tmp_path, timeout_s=3000.0, on_lost=calls.append):
        _replace(tmp_path / "lease.json", other)
    assert calls == [other] and read_lease(tmp_path) == other


def test_a_failure_after_the_lease_was_lost_records_nothing(tmp_path, capfd):
    """Whatever ended the job once the folder is another process's: exit 2, its traceback said, no status written."""
    from omegaconf import OmegaConf

    from rfsweep.run.job import _failure
    from rfsweep.runfolder import read_status, write_status

    write_status(tmp_path, "running", step=3)
    before = (tmp_path / "status.json").read_text()
    out = _failure(OmegaConf.create({"run_dir": str(tmp_path)}), RuntimeError("boom"), (), True, lost="taken over")
    assert (out.code, out.outcome) == (2, "lost") and (tmp_path / "status.json").read_text() == before
    err = capfd.readouterr().err
    assert "RuntimeError: boom" in err and "error: taken over; this process stopped without writing" in err
    assert read_status(tmp_path)["state"] == "running"


def test_a_job_whose_lease_is_lost_ends_its_wandb_run_without_an_outcome(monkeypatch, tmp_path):
    """Any exception once the folder is another process's (its write fence says no): the W&B run, which the new
    holder resumes, is finished as lost (no outcome of ours), not as failed."""
    from rfsweep.fence import Fence, fenced
    from rfsweep.run import tracking

    calls = []
    monkeypatch.setattr(tracking.JobRun, "__init__", lambda self, *a, **k: None)
    monkeypatch.setattr(tracking.JobRun, "finish", lambda self, outcome, reason="": calls.append(outcome))
    for ours, first in ((False, "lost"), (True, "failed")):
        calls.clear()
        lease = type("Lease", (), {"confirm": lambda self, ours=ours: ours})()
        with pytest.raises(RuntimeError), fenced(Fence(tmp_path, lease)):
            with tracking.job_run(None, tmp_path, None, "train"):
                raise RuntimeError("a bug")
        assert calls[0] == first
