"""`python -m rfsweep.cli.precompute OUT [options] [overrides]`: encode a dataset's splits once with the configured
autoencoder and text encoders (App. E.1), for `data.name=precomputed data.path=OUT` (layout: `precomputed`).

    python -m rfsweep.cli.precompute /data/shapes-minilm data=shapes conditioning=minilm
    python -m rfsweep.cli.precompute OUT --splits train --device cuda --dtype bf16 --workers 8 --shard auto \\
        data=imagenet data.name=imagenet data.path=/data/imagenet conditioning=sd3 autoencoder=sd_vae \\
        data.resolution=256                                                 # one task of a SLURM array
    python -m rfsweep.cli.precompute OUT --splits val,test data=coco data.path=/data/coco ...   # COCO beside it

--splits: which splits (default all); --shard i/N: this task encodes every N-th shard from i, a rerun resumes;
--shard auto: i/N of this SLURM array task (any --array=A-B[:S][%T]; 0/1 outside an array); --device, --dtype
(fp32, bf16, fp16) of the autoencoder (the text encoders' dtype is conditioning.dtype); --workers: image-decoding
loader processes; --batch-size.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from rfsweep.data import SPLITS, build_dataset
from rfsweep.data.precomputed import precompute
from rfsweep.errors import DataError, UserError
from rfsweep.run.builders import build_autoencoder, build_conditioner, encoding_signature
from rfsweep.run.preflight import preflight

CONF = str(Path(__file__).resolve().parents[2] / "conf")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHARD_ALLOWED = "i/N with 0 <= i < N, or auto in a SLURM array --array=A-B[:S][%T] or outside one"
SLURM_ARRAY = ("ID", "MIN", "MAX", "STEP", "COUNT")


def shard_from_slurm(env: Mapping[str, str]) -> tuple[int, int]:
    """This SLURM array task's shard (i, N): i = (task id - min) / step, N = the array's task count, so the tasks
    of --array=A-B[:S] (a % throttle is not in the variables) cover 0..N-1 once each; (0, 1) outside an array."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return 0, 1
    shown = ", ".join(f"SLURM_ARRAY_TASK_{k}={env.get(f'SLURM_ARRAY_TASK_{k}')}" for k in SLURM_ARRAY)
    try:
        task, lo, hi, step, n = (int(env[f"SLURM_ARRAY_TASK_{k}"]) for k in SLURM_ARRAY)
        assert step >= 1 and lo <= task <= hi and (task - lo) % step == 0 and n == (hi - lo) // step + 1
    except (KeyError, ValueError, AssertionError):
        raise DataError(f"--shard 'auto' with inconsistent {shown} (allowed: {SHARD_ALLOWED})") from None
    return (task - lo) // step, n


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m rfsweep.cli.precompute", description=__doc__.split("\n")[0])
    p.add_argument("out", help="the folder to write")
    p.add_argument("--splits", default=",".join(SPLITS))
    p.add_argument("--shard", default="0/1", help="i/N: encode every N-th shard from i; auto: this SLURM array task")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    args, overrides = p.parse_known_args(argv)
    splits = tuple(args.splits.split(","))
    if not args.splits or not set(splits) <= set(SPLITS):
        raise DataError(f"--splits {args.splits!r} is unknown (allowed: a comma list of {', '.join(SPLITS)})")
    if args.shard == "auto":
        i, n = shard_from_slurm(os.environ)
    else:
        try:
            i, n = (int(x) for x in args.shard.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            raise DataError(f"--shard {args.shard!r} (allowed: {SHARD_ALLOWED})") from None
    args.splits, args.shard = splits, (i, n)
    return args, overrides


def main(argv: list[str]) -> None:
    try:
        args, overrides = parse(argv)
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, f"run_dir={args.out}"])
        preflight(cfg, data=False)
        datasets = {s: build_dataset(cfg.data.name, s, cfg.data.resolution, cfg.data.seed, cfg.data.path)
                    for s in args.splits}  # every split checked before any encoding
        ae, cond = build_autoencoder(cfg), build_conditioner(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sig = encoding_signature(cfg)
    for split, ds in datasets.items():
        try:
            done = precompute(ds, ae, cond, args.out, split, sig, shard=args.shard, batch_size=args.batch_size,
                              workers=args.workers, device=args.device, dtype=DTYPES[args.dtype],
                              seed=int(cfg.data.seed))
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        state = "complete" if done else f"shard {args.shard[0]}/{args.shard[1]} done, other shards pending"
        print(f"{split}: {len(ds)} items -> {args.out}/{split}/ ({state})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
