"""`scripts/slurm_local.sh up` from a clean state (runs first: the other cluster tests need the node it starts).

A fresh machine has no configs and no state folder; `up` must write them, start every daemon and answer, and do so
again when run twice. `make test-cluster` runs this before the sweeps; it stops the daemons, moves the script's own
configs and state folder aside, and puts nothing back: `up` rewrites them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.cluster

SCRIPT = ROOT / "scripts" / "slurm_local.sh"
STATE = Path(os.environ.get("RFSWEEP_SLURM_STATE", "/var/tmp/rfsweep-slurm"))
CONFIGS = (Path("/etc/slurm/slurm.conf"), Path("/etc/slurm/slurmdbd.conf"))
MARK = "# written by rfsweep scripts/slurm_local.sh"


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def _node_answers() -> bool:
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and r.stdout.strip().startswith(("idle", "mix", "alloc")) and acct.returncode == 0


def test_up_starts_from_a_clean_state_and_twice(tmp_path):
    for conf in CONFIGS:  # never touch a SLURM the script did not write
        if conf.exists() and MARK not in conf.read_text().splitlines()[0]:
            pytest.skip(f"{conf} was not written by scripts/slurm_local.sh")
    down = _script("down")
    assert down.returncode == 0, down.stderr
    aside = tmp_path / "aside"
    aside.mkdir()
    for conf in CONFIGS:
        if conf.exists():
            shutil.move(str(conf), aside / conf.name)
    if STATE.exists():
        shutil.move(str(STATE), aside / "state")
    t0 = time.time()
    up = _script("up")
    assert up.returncode == 0, f"up from a clean state failed:\n{up.stderr[-3000:]}"
    assert all(c.is_file() and c.read_text().startswith(MARK) for c in CONFIGS) and STATE.is_dir()
    assert _node_answers(), up.stderr[-2000:]
    print(f"[test] up from a clean state: {time.time() - t0:.1f} s", flush=True)
    again = _script("up")
    assert again.returncode == 0 and "restarting" not in again.stderr and _node_answers(), again.stderr[-2000:]
    # a job left in the queue is gone after the next `up`
    job = subprocess.run(["sbatch", "--parsable", "--begin=now+600", "-o", "/dev/null", "--wrap", "true"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    assert job
    third = _script("up")
    assert third.returncode == 0 and f"cancelling jobs left in the queue: {job}" in third.stderr, third.stderr
    assert not subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, timeout=30).stdout.strip()
    shutil.rmtree(aside, ignore_errors=True)
