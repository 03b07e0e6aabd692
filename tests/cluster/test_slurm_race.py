"""A raced sweep (`hydra/sweeper=race`) through submitit's SLURM launcher on the one-node SLURM (`make
test-cluster`): 4 variants x 2 data sets, two rungs (25% and 50% of training). Every launch of every rung is a SLURM
job array; the variants the rule stops stay at their rung's checkpoint, the others finish; the same command again
submits nothing and leaves the decision log byte for byte as it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.__main__ import main as analysis_main
from analysis.race_log import DecisionLog
from rfsweep.runfolder import read_outcome, read_status
from rfsweep.train.checkpoint_io import resume_checkpoint
from tests.cluster.test_slurm import SLURM, common
from tests.helpers import ROOT, _env

pytestmark = pytest.mark.cluster

VARIANTS = '"rf/lognorm(1.00, 1.40)","rf/lognorm(0.50, 1.00)","edm(-1.20, 0.60)","rf/lognorm(-1.00, 0.20)"'
STEPS = 200
RUNG_EVAL = ["eval=embedded", "eval.n_samples=64", "eval.batch_size=64", "eval.weights=[ema]",
             "eval.settings=[[5,5.0]]", "rung.samples=64", "rung.settings=[[5,5.0]]"]


def race(root: Path) -> list[str]:
    return [*common(root, STEPS), "trainer.ckpt_every=50", "trainer.val_every=50", "autoencoder.scale=4.0", "-m",
            f"formulation.variant={VARIANTS}", "data=digits,shapes", "name=race", "grid=demo", *RUNG_EVAL, *SLURM,
            f"paths.sweeps={root}", "hydra/sweeper=race", "hydra.sweeper.rungs=[0.25,0.5]",
            "hydra.sweeper.margins=[0,0]", "hydra.sweeper.top=1", "hydra.sweeper.keep=0.0", "hydra.sweeper.audit=1",
            "hydra.sweeper.bootstrap=200"]


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rfsweep", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=1200)


def test_a_raced_sweep_on_slurm_stops_at_its_rungs_and_reruns_to_the_same_log(tmp_path):
    if subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode:
        pytest.fail("no SLURM answers here: run `bash scripts/slurm_local.sh up` (make test-cluster does)")
    r = _cli(race(tmp_path))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    sweep = tmp_path / "race"
    records = DecisionLog(sweep).records()
    assert [x.get("rung") for x in records] == [1, 2, None] and records[-1]["end"]
    assert [x["step"] for x in records[:2]] == [50, 100]
    end = records[-1]
    stopped, finished = set(end["stopped"]), set(end["finished"])
    assert stopped, records  # the rule stopped someone: a race, not a grid
    at = {v: x["step"] for x in records[:2] for v in x["stopped"] if v not in x["audit"]}
    for status_file in sorted(sweep.rglob("status.json")):
        run = status_file.parent
        status, variant = read_status(run), json.loads((run / "config.json").read_text())["formulation"]["variant"]
        assert status.get("slurm_job"), status  # every launch went through SLURM
        step = resume_checkpoint(run)[1]
        if variant in stopped:
            assert step == at[variant] and read_outcome(run)["outcome"] == "stopped", (run, step)
        else:
            assert variant in finished and step == STEPS and status["state"] == "done", (run, status)
    assert "race: ended:" in r.stdout and "compute:" in r.stdout
    log = (sweep / "race.jsonl").read_bytes()
    out = tmp_path / "tables"
    assert analysis_main(["rank-table", "--results", str(sweep), "--out", str(out)]) == 0
    table = (out / "table1.md").read_text()
    assert "Stopped by the race" in table and all(v in table for v in stopped)
    assert json.loads((out / "race_compute.json").read_text())["spent"] == end["spent"]

    again = _cli(race(tmp_path))  # the same command: nothing submitted, nothing re-decided
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert (sweep / "race.jsonl").read_bytes() == log
    said = again.stdout + again.stderr
    assert "Submitting" not in said, said[-3000:]
