"""`python -m rfsweep.cli.precompute --shard auto`: a SLURM array task's shard from SLURM's array variables."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rfsweep.cli.precompute import parse, shard_from_slurm
from rfsweep.data import DataError, build_dataset
from rfsweep.data.precomputed import PrecomputedDataset
from tests.helpers import ROOT


def _array(lo: int, hi: int, step: int = 1) -> list[dict[str, str]]:
    """The environment SLURM gives each task of `sbatch --array=lo-hi:step` (a `%` throttle adds nothing)."""
    ids = range(lo, hi + 1, step)
    return [{"SLURM_ARRAY_JOB_ID": "900", "SLURM_ARRAY_TASK_ID": str(t), "SLURM_ARRAY_TASK_MIN": str(lo),
             "SLURM_ARRAY_TASK_MAX": str(ids[-1]), "SLURM_ARRAY_TASK_STEP": str(step),
             "SLURM_ARRAY_TASK_COUNT": str(len(ids))} for t in ids]


@pytest.mark.parametrize("spec", [(0, 15), (1, 16), (0, 30, 2), (5, 7)])  # 1-16 also stands for 1-16%4
def test_every_array_task_gets_its_own_shard(spec):
    tasks = _array(*spec)
    shards = [shard_from_slurm(env) for env in tasks]
    assert {n for _, n in shards} == {len(tasks)}
    assert sorted(i for i, _ in shards) == list(range(len(tasks)))


def test_auto_outside_a_slurm_array_is_the_whole_split(monkeypatch):
    for k in [k for k in os.environ if k.startswith("SLURM_ARRAY_")]:
        monkeypatch.delenv(k)
    assert shard_from_slurm({}) == (0, 1)
    assert parse(["out", "--shard", "auto"])[0].shard == (0, 1)
    assert parse(["out", "--shard", "3/16"])[0].shard == (3, 16)  # i/N as before


@pytest.mark.parametrize("change", [
    {"SLURM_ARRAY_TASK_ID": "3"},  # not on the step grid of 0-30:2
    {"SLURM_ARRAY_TASK_COUNT": "15"},  # not (max - min) / step + 1
    {"SLURM_ARRAY_TASK_ID": "32"},  # past the array's end
    {"SLURM_ARRAY_TASK_STEP": "0"},
    {"SLURM_ARRAY_TASK_MIN": "x"},
    {"SLURM_ARRAY_TASK_COUNT": None},  # missing
])
def test_inconsistent_slurm_variables_are_a_one_line_error(monkeypatch, change):
    env = _array(0, 30, 2)[2]
    for k, v in {**env, **change}.items():
        monkeypatch.delenv(k, raising=False) if v is None else monkeypatch.setenv(k, v)
    with pytest.raises(DataError) as e:
        parse(["out", "--shard", "auto"])
    msg = str(e.value)
    assert msg.startswith("--shard 'auto'") and "allowed" in msg and "\n" not in msg
    with pytest.raises(DataError, match="--shard '16/16' .*allowed"):
        parse(["out", "--shard", "16/16"])


def test_a_one_based_array_completes_the_split(tmp_path):
    """Two tasks of `--array=1-2`, the second first: each encodes its own shards, together the whole split."""
    out, folder = tmp_path / "pre", tmp_path / "pre" / "val"
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}

    def task(env: dict) -> str:
        r = subprocess.run([sys.executable, "-m", "rfsweep.cli.precompute", str(out), "--shard", "auto", "--splits",
                            "val", "data=digits", "conditioning=hash"], cwd=ROOT,
                           env={**base, **env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    first, second = _array(1, 2)
    assert "(shard 1/2 done, other shards pending)" in task(second)  # shard index 1: not shard 0
    assert not (folder / "items-00000.safetensors").is_file() and not (folder / "complete.json").is_file()
    assert "(complete)" in task(first)
    assert (folder / "complete.json").is_file()
    assert len(PrecomputedDataset(out, "val")) == len(build_dataset("digits", "val"))
