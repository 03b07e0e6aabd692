"""`python -m rfsweep.cli.generate RUN_DIR PROMPT [PROMPT ...]`: images from a trained run, for any prompts and sampler
setting. The run's checkpoint carries its resolved config, so nothing else is needed; the weights are the ones
evaluation uses (the lowest EMA validation loss, else the last): its EMA, raw weights, or (`--weights phema0.1`, a run
trained with ema=posthoc) the post-hoc EMA of that length rebuilt at that step. Writes one PNG grid (prompts in order,
row-major) and prints its path.

Example: python -m rfsweep.cli.generate runs/default/shapes/rf-lognorm_0.00_1.00/mmdit/seed0 "a red circle" \\
             --steps 25 --guidance 5 --n 4 --out circles.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

import rfsweep.run.preflight  # noqa: F401 (registers the configs' resolvers and schema)
from rfsweep.errors import UserError
from rfsweep.run.builders import build_model
from rfsweep.runfolder import BEST, read_config


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rfsweep.cli.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("prompts", nargs="+")
    p.add_argument("--steps", type=int, default=25, help="Euler steps (paper: 5 to 50)")
    p.add_argument("--guidance", "--cfg", type=float, default=5.0, help="classifier-free guidance scale (1: none)")
    p.add_argument("--shift", type=float, default=None, help="time shift alpha (default: the run's sampler.shift)")
    p.add_argument("--weights", default="ema", help="ema, raw, or phema<sigma_rel> (e.g. phema0.1: a post-hoc EMA "
                   "length rebuilt from the run's snapshots)")
    p.add_argument("--n", type=int, default=1, help="images per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, help="PNG path (default RUN_DIR/generated.png)")
    a = p.parse_args(argv)
    for key, ok in (("steps", a.steps > 0), ("n", a.n > 0), ("guidance", a.guidance >= 0),
                    ("shift", a.shift is None or a.shift > 0)):
        if not ok:
            p.error(f"--{key}={getattr(a, key)} is out of range (allowed: steps, n > 0; guidance >= 0; shift > 0)")
    from rfsweep.results import WEIGHTS, posthoc_sigma_rel  # deferred: pandas (~0.3 s), not needed by --help

    if a.weights not in WEIGHTS and posthoc_sigma_rel(a.weights) is None:
        p.error(f"--weights={a.weights} (allowed: {', '.join(WEIGHTS)} or phema<sigma_rel>, sigma_rel in "
                f"[0.0001, 0.28], e.g. phema0.1)")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    from rfsweep.evaluation.grids import save_captioned_grid  # deferred: torchvision, once the arguments are read
    from rfsweep.run.eval_stage import PostHocNets  # deferred: torchmetrics, open_clip, once the arguments are read
    from rfsweep.train.checkpoint_io import (  # deferred: lightning, too
        CheckpointError,
        evaluated_checkpoint,
        load_checkpoint,
        load_weights,
        resume_checkpoint,
    )

    try:
        if evaluated_checkpoint(a.run_dir) is None:
            raise CheckpointError(f"{a.run_dir}: no checkpoints/{BEST} or checkpoints/step-<N>.ckpt (allowed: a run "
                                  f"folder written by python -m rfsweep)")
        config = read_config(a.run_dir)  # the run's config.json, else the one its last checkpoint carries
        last = resume_checkpoint(a.run_dir)[0] if config is None else None
        if last is not None and last.is_file():
            config = (load_checkpoint(last).get("rfsweep") or {}).get("config")
        if config is None:
            raise CheckpointError(f"{a.run_dir}: holds no run config (allowed: a run folder written by python -m "
                                  f"rfsweep, with config.json or a checkpoints/step-<N>.ckpt)")
        cfg = OmegaConf.create(config)
        module = build_model(cfg)
        info = load_weights(module, a.run_dir)  # the post-hoc EMAs are not in best.safetensors: their snapshots are
        module.to(torch.device(a.device))
        module.place_frozen()
        weights = PostHocNets(module, a.run_dir, info["step"]).get(a.weights)  # rebuilt at the weights' step
    except UserError as e:  # a damaged checkpoint, missing weights or snapshots: one line, nothing sampled
        print(f"error: {e}", file=sys.stderr)
        return 2
    captions = [p for p in a.prompts for _ in range(a.n)]
    shift = cfg.sampler.shift if a.shift is None else a.shift
    images = module.generate(captions, steps=a.steps, guidance=a.guidance, shift=shift, seed=a.seed, weights=weights)
    out = save_captioned_grid(images, captions, a.out or a.run_dir / "generated.png",
                              nrow=a.n if a.n > 1 else min(len(captions), 8))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
