"""`python -m rfsweep.data.precompute OUT [overrides]`: encode a dataset's splits once with the configured
autoencoder and text encoders (App. E.1), for `data.name=precomputed data.path=OUT`.

Example: python -m rfsweep.data.precompute /data/shapes-minilm data=shapes conditioning=minilm
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from rfsweep.data import SPLITS, build_dataset
from rfsweep.data.precomputed import precompute
from rfsweep.sweep import register_resolvers

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        sys.exit("usage: python -m rfsweep.data.precompute OUT [hydra overrides, e.g. data=shapes]")
    out, overrides = argv[0], argv[1:]
    register_resolvers()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"run_dir={out}"])
    from rfsweep.app import build_autoencoder, build_conditioner

    ae, cond = build_autoencoder(cfg), build_conditioner(cfg)
    for split in SPLITS:
        ds = build_dataset(cfg.data.name, split, cfg.data.resolution, cfg.seed, cfg.data.path)
        precompute(ds, ae, cond, out, split)
        print(f"{split}: {len(ds)} items -> {out}/{split}.safetensors", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
