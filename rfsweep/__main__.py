"""`python -m rfsweep [overrides]`: the Hydra app (conf/config.yaml)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from rfsweep.sweep import register_resolvers

CONF = str(Path(__file__).resolve().parent.parent / "conf")
register_resolvers()


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def _main(cfg: DictConfig) -> None:
    from rfsweep.app import main

    main(cfg)


if __name__ == "__main__":
    _main()
