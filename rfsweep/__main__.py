"""`python -m rfsweep [overrides]`: the Hydra app (conf/config.yaml)."""

import sys
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


def _multirun_flag_first(argv: list[str]) -> list[str]:
    """Hydra's argparse stops reading overrides at `-m`; accept it anywhere (`... -m dry_run=true`)."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    return argv[:1] + flags + [a for a in argv[1:] if a not in ("-m", "--multirun")]


if __name__ == "__main__":
    from rfsweep.schema import moved_key

    moved = moved_key(sys.argv[1:])
    if moved:  # before Hydra, whose own message for an unknown key would not say where it went
        print(f"error: {moved}", file=sys.stderr)
        sys.exit(2)
    sys.argv = _multirun_flag_first(sys.argv)
    _main()
