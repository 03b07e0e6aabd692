"""scripts/gpu_check.sh, the one prepared call on a lent GPU, must not waste it: its stage limits fit the device's
10-minute call, and every stage runs (at toy sizes, DEVICE=cpu) with wandb absent as on the GPU image."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_stage_limits_fit_one_device_call():
    text = SCRIPT.read_text()
    cuda = text.split('if [ "$DEVICE" = cuda ]; then', 1)[1].split("else", 1)[0]
    limits = [int(v) for v in re.findall(r"T_(?:TESTS|E2E)=(\d+)", cuda)]
    limits += [int(v) for v in re.search(r"T_BENCH=\(([\d ]+)\)", cuda).group(1).split()]
    assert len(limits) == 6 and sum(limits) <= 580  # the call limit is 600 s; imports and copies take the rest
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.slow
def test_every_stage_runs_on_cpu(tmp_path):
    fake = tmp_path / "site" / "wandb"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('wandb is not on the GPU image')\n")
    env = dict(os.environ, DEVICE="cpu", OUT=str(tmp_path / "out"), RUNS=str(tmp_path / "runs"),
               PY=sys.executable, PYTHONPATH=str(tmp_path / "site"), RFSWEEP_CACHE=str(tmp_path / "cache"))
    log = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True).stdout
    stages = dict(re.findall(r"^stage (\S+): rc=(\d+)", log, re.M))
    assert stages == {"tests": "0", "e2e": "0", "bench-eager": "0", "bench-compile": "0",
                      "bench-compile-flash": "0", "profile": "0"}, log
    out = tmp_path / "out"
    assert "rf/lognorm(0.00, 1.00)" in (out / "e2e_results.csv").read_text()
    for f in ("bench_eager.json", "bench_compile.json", "bench_compile_flash.json", "profile_compiled.txt"):
        assert (out / f).stat().st_size > 0, f
