"""`python -m rfsweep.data.precompute OUT [overrides]`: encode a dataset's splits once with the configured
autoencoder and text encoders (App. E.1), for `data.name=precomputed data.path=OUT`.

Example: python -m rfsweep.data.precompute /data/shapes-minilm data=shapes conditioning=minilm
`--splits val,test` encodes only those splits, e.g. to put COCO-2014 val (the paper's validation and evaluation
data) beside a CC12M or ImageNet training split in one folder:
    python -m rfsweep.data.precompute OUT data=imagenet data.name=imagenet data.path=/data/imagenet --splits train
    python -m rfsweep.data.precompute OUT data=coco data.path=/data/coco --splits val,test
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from rfsweep.data import SPLITS, DataError, build_dataset
from rfsweep.data.precomputed import precompute
from rfsweep.sweep import register_resolvers

CONF = str(Path(__file__).resolve().parents[2] / "conf")


USAGE = "usage: python -m rfsweep.data.precompute OUT [--splits train,val,test] [hydra overrides, e.g. data=shapes]"


def _splits(overrides: list[str]) -> tuple[str, ...]:
    """Remove `--splits a,b` from the overrides and return the splits (default: all)."""
    if "--splits" not in overrides:
        return SPLITS
    i = overrides.index("--splits")
    value = overrides[i + 1] if i + 1 < len(overrides) else ""
    del overrides[i : i + 2]
    splits = tuple(value.split(","))
    if not value or not set(splits) <= set(SPLITS):
        raise DataError(f"--splits {value!r} is unknown (allowed: a comma list of {', '.join(SPLITS)})")
    return splits


def main(argv: list[str]) -> None:
    from rfsweep.config import ConfigError
    from rfsweep.text_encoders import WeightsUnavailable

    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        sys.exit(USAGE)
    out, overrides = argv[0], list(argv[1:])
    try:
        splits = _splits(overrides)
        register_resolvers()
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, f"run_dir={out}"])
        from rfsweep.builders import build_autoencoder, build_conditioner

        datasets = {s: build_dataset(cfg.data.name, s, cfg.data.resolution, cfg.data.seed, cfg.data.path)
                    for s in splits}  # every split checked before any encoding
        ae, cond = build_autoencoder(cfg), build_conditioner(cfg)
    except (DataError, ConfigError, WeightsUnavailable) as e:
        sys.exit(f"error: {e}")
    for split, ds in datasets.items():
        precompute(ds, ae, cond, out, split)
        print(f"{split}: {len(ds)} items -> {out}/{split}-*.safetensors", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
