"""`python -m rfsweep.cli.posthoc RUN_DIR --sigma-rel 0.07 [0.12 ...] [--step N]`: EMAs of any length rebuilt after
training from a run's post-hoc EMA snapshots (trained with `ema=posthoc`; EDM2's least-squares reconstruction,
`rfsweep.train.posthoc_ema`). Writes `RUN_DIR/checkpoints/posthoc_ema/sigma<sigma_rel>_step<N>.safetensors` (the
backbone's weights; metadata: step, sigma_rel, the snapshots used, the sum of their coefficients and the profile's
fit error) and prints each path; all lengths are rebuilt in one pass over the snapshots. A length the snapshots
match poorly is flagged in one line (`rfsweep.train.posthoc_ema.FIT_TOLERANCE`).

Example: python -m rfsweep.cli.posthoc runs/default/shapes/rf-lognorm_0.00_1.00/mlp/seed0 --sigma-rel 0.07 0.15
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rfsweep.atomic import atomic_save_tensors
from rfsweep.errors import UserError
from rfsweep.runfolder import checkpoint_dir
from rfsweep.train.posthoc_ema import FOLDER, reconstruct_many, tag

OUT_FOLDER = "posthoc_ema"


def output_path(run_dir: Path, sigma_rel: float, step: int) -> Path:
    return checkpoint_dir(run_dir) / OUT_FOLDER / f"sigma{tag(sigma_rel)}_step{step:07d}.safetensors"


def rebuild(run_dir: Path, sigma_rels: list[float], step: int | None = None) -> list[tuple[Path, dict]]:
    """Rebuild the EMA lengths in one pass, write each atomically, and return their paths and infos."""
    states, infos = reconstruct_many(checkpoint_dir(run_dir) / FOLDER, sigma_rels, step)
    out = []
    for sigma_rel in sigma_rels:
        info = infos[sigma_rel]
        path = output_path(run_dir, sigma_rel, info["step"])
        meta = {k: str(v) for k, v in info.items()}
        atomic_save_tensors({k: v.contiguous() for k, v in states[sigma_rel].items()}, path, metadata=meta)
        out.append((path, info))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rfsweep.cli.posthoc", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--sigma-rel", type=float, nargs="+", required=True, help="EMA lengths (EDM2's sigma_rel)")
    p.add_argument("--step", type=int, help="the training step to rebuild at (default: the last snapshot's)")
    a = p.parse_args(argv)
    try:
        start = time.perf_counter()
        built = rebuild(a.run_dir, a.sigma_rel, a.step)
        took = time.perf_counter() - start
        for path, info in built:
            print(f"{path}  sigma_rel={info['sigma_rel']:g} step={info['step']} snapshots={info['snapshots']} "
                  f"coefficient sum={info['sum']:.4f} fit error={info['fit_error']:.2%}"
                  f"{' (poor)' if info['poor'] else ''}", flush=True)
        print(f"{len(built)} length(s) in one pass: {took:.2f} s", flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
