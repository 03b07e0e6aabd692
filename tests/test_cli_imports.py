"""`python -m rfsweep --help` and a dry run import only what they use: the help text needs Hydra and the configs'
resolvers (no torch, no Lightning, no pandas); a dry run builds the backbone on the meta device (torch) but trains
and evaluates nothing (no Lightning, torchmetrics, torchvision, W&B, transformers, diffusers, open_clip). Checked in a
fresh interpreter per case: what the entry point leaves in `sys.modules`. No timings (machines differ 2x in speed):
`make bench-cli` measures them."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT, _env

NEVER = ("lightning", "pytorch_lightning", "torchmetrics", "torchvision", "wandb", "transformers", "diffusers",
         "open_clip")  # nothing of training, evaluation or tracking
HELP_NEVER = (*NEVER, "torch", "pandas", "scipy", "sklearn")  # and nothing the help text does not use

# Runs `python -m rfsweep ARGS` in this interpreter, then prints the top-level packages it imported (json, last line).
PROBE = """
import json, runpy, sys
sys.argv = ["rfsweep", *sys.argv[1:]]
try:
    runpy.run_module("rfsweep", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _imports(args: list[str]) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stdout


def test_help_imports_neither_torch_nor_lightning():
    seen, out = _imports(["--help"])
    assert "Configuration groups" in out and seen["code"] in (0, None)
    assert sorted(set(HELP_NEVER) & set(seen["modules"])) == []


def test_a_dry_run_imports_nothing_of_training_or_evaluation(tmp_path):
    seen, out = _imports(["dry_run=true", f"paths.runs={tmp_path}/runs", f"paths.sweeps={tmp_path}/multirun",
                          f"paths.cache={tmp_path}/cache"])
    assert "dry-run: variant=" in out and seen["code"] in (0, None)
    assert sorted(set(NEVER) & set(seen["modules"])) == []
    assert [p.name for p in tmp_path.rglob("*") if p.suffix in (".json", ".ckpt", ".csv")] == []  # nothing written


def test_a_sweeps_dry_run_imports_nothing_of_training_or_evaluation_nor_pandas(tmp_path):
    """`-m dry_run=true` (rfsweep.run.sweep.dry_run_sweep, no launcher): the 122 jobs' lines, nothing written."""
    seen, out = _imports(["+experiment=demo", "-m", "dry_run=true", f"paths.runs={tmp_path}/runs",
                          f"paths.sweeps={tmp_path}/multirun", f"paths.cache={tmp_path}/cache"])
    assert out.count("dry-run: variant=") == 122 and seen["code"] in (0, None)
    assert sorted({*NEVER, "pandas", "joblib"} & set(seen["modules"])) == []
    assert list(tmp_path.iterdir()) == []  # no sweep folder, no multirun.yaml, no run folders
