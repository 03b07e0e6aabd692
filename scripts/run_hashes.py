"""The weights and results of five small runs, hashed: a change that claims to be a pure move (a refactor) must leave
every line this prints unchanged. `python scripts/run_hashes.py [OUT_DIR]` (about 2 minutes on 2 CPU cores).

Five runs of different families, backbones, data and conditioning, each trained briefly and evaluated on two sampler
settings; per run: the sha256 of the last checkpoint's weights (raw and EMA, in key order), of best.safetensors'
tensors, and of results.csv's metric columns (rounded to 1e-6, real images included).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["logger=csv", "trainer.max_steps=24", "trainer.val_every=12", "trainer.ckpt_every=12", "trainer.n_val=16",
          "trainer.batch_size=16", "trainer.warmup_steps=4", "trainer.threads=1", "sampler.n_grid=4",
          "sampler.steps=3", "eval=embedded", "eval.n_samples=16", "eval.batch_size=16", "eval.weights=[ema,raw]",
          "eval.settings=[[3,1.0],[5,5.0]]"]
RUNS = {
    "rf-mlp-shapes": ['formulation.variant="rf/lognorm(0.00, 1.00)"', "backbone=mlp", "data=shapes",
                      "conditioning=hash"],
    "eps-mmdit-digits": ['formulation.variant="eps/linear"', "backbone=mmdit", "backbone.depth=1", "backbone.width=32",
                         "data=digits", "conditioning=hash"],
    "edm-dit-colour": ['formulation.variant="edm(-1.20, 1.20)"', "backbone=dit", "backbone.depth=1",
                       "backbone.width=32", "data=colour_digits", "conditioning=minilm"],
    "v-uvit-shapes": ['formulation.variant="v/cos"', "backbone=uvit", "backbone.depth=2", "backbone.width=32",
                      "data=shapes", "conditioning=hash"],
    "mode-crossdit-digits": ['formulation.variant="rf/mode(1.29)"', "backbone=crossdit", "backbone.depth=1",
                             "backbone.width=32", "data=digits", "conditioning=two_encoders"],
}


def _sha(parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
    return h.hexdigest()[:16]


def hashes(run: Path) -> dict:
    import pandas as pd
    import torch
    from safetensors import safe_open

    from rfsweep.train.checkpoint_io import resume_checkpoint

    ckpt = torch.load(resume_checkpoint(run)[0], map_location="cpu", weights_only=True)
    weights = _sha(k.encode() + v.contiguous().numpy().tobytes() for k, v in sorted(ckpt["state_dict"].items()))
    with safe_open(str(run / "checkpoints" / "best.safetensors"), framework="pt") as f:
        best = _sha(k.encode() + f.get_tensor(k).contiguous().numpy().tobytes() for k in sorted(f.keys()))
    df = pd.read_csv(run / "results.csv").sort_values(["weights", "steps", "cfg"])
    results = _sha(df[["weights", "steps", "cfg", "clip_score", "fid"]].round(6).to_csv(index=False))
    return {"weights": weights, "best": best, "results": results}


def main(out: Path) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONHASHSEED": "0"}
    for name, args in RUNS.items():
        r = subprocess.run([sys.executable, "-m", "rfsweep", *COMMON, *args, f"name={name}", f"paths.runs={out}/runs",
                            f"paths.cache={out}/cache"], cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode:
            print(f"{name}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
            return 1
        (run,) = (out / "runs" / name).rglob("results.csv")
        h = hashes(run.parent)
        print(f"{name:22s} weights {h['weights']}  best {h['best']}  results {h['results']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="rfsweep-hashes-"))))
