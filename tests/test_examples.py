"""The examples run as a user runs them (a subprocess, `python examples/<name>.py ...`), on the library alone."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TRAIN_MINIMAL = ROOT / "examples" / "train_minimal.py"
FRAMEWORKS = ("hydra", "omegaconf", "lightning", "pytorch_lightning", "lightning_fabric")  # none in the examples
LOSS = re.compile(r"^step\s+(\d+) \| loss ([0-9.]+)$", re.M)
# Runs the example as __main__ (as `python examples/train_minimal.py` does), then reports the top-level packages that
# were imported, the library's imports included, on the last line of stderr.
WRAPPER = """import runpy, sys, json
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("MODULES " + json.dumps(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)
"""


def run_example(path: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(path), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    modules = set(json.loads(last[len("MODULES "):])) if last.startswith("MODULES ") else set()
    return proc, modules


@pytest.fixture(scope="module")
def minimal(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_minimal") / "grid" / "samples.png"  # a folder that does not exist yet
    proc, modules = run_example(TRAIN_MINIMAL, "--out", str(out), "--steps", "60", "--seed", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, modules, out


def test_train_minimal_writes_the_grid(minimal):
    _, _, out = minimal
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        pixels = np.asarray(im)
    # 32 samples, 8 per row (4 rows), each 8x8 shown at 32x32, with torchvision's 2-pixel padding
    assert pixels.shape == (4 * (32 + 2) + 2, 8 * (32 + 2) + 2, 3)
    tiles = [pixels[2 + r * 34: 34 + r * 34, 2 + c * 34: 34 + c * 34] for r in range(4) for c in range(8)]
    assert len({t.tobytes() for t in tiles}) == 32  # one sample per prompt, no two alike
    assert all(t.std() > 0 for t in tiles)  # shapes on a background, not blank tiles


def test_train_minimal_lowers_the_loss(minimal):
    proc, _, _ = minimal
    steps, losses = zip(*((int(s), float(v)) for s, v in LOSS.findall(proc.stdout)))
    assert steps == tuple(range(6, 61, 6)), proc.stdout  # every tenth of the run, the mean loss since the last print
    # zero-initialised output: the first mean is near E|eps - x0|^2 ~ 1.8 (1.46 measured), 60 steps reach ~0.55
    assert np.mean(losses[-3:]) < 0.7 * losses[0], proc.stdout


def test_train_minimal_is_deterministic(minimal, tmp_path):
    proc, _, out = minimal
    again, _ = run_example(TRAIN_MINIMAL, "--out", str(tmp_path / "samples.png"), "--steps", "60", "--seed", "0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.replace(str(tmp_path / "samples.png"), str(out)) == proc.stdout
    assert (tmp_path / "samples.png").read_bytes() == out.read_bytes()


def test_train_minimal_needs_no_framework(minimal):
    _, modules, _ = minimal
    assert "rfsweep" in modules and "torch" in modules  # the report is real
    assert not set(FRAMEWORKS) & modules, sorted(set(FRAMEWORKS) & modules)
    tree = ast.parse(TRAIN_MINIMAL.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not set(FRAMEWORKS) & imported


def test_train_minimal_takes_another_family(tmp_path):
    """--variant reaches the formulation: EDM (VE path, preconditioned network) trains and samples in the same loop."""
    proc, _ = run_example(TRAIN_MINIMAL, "--out", str(tmp_path / "s.png"), "--steps", "5", "--variant",
                          "edm(-1.20, 1.20)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    losses = [float(v) for _, v in LOSS.findall(proc.stdout)]
    assert len(losses) == 5 and np.isfinite(losses).all(), proc.stdout
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (8 * 34 + 2, 4 * 34 + 2)
