"""`python -m rfsweep [overrides]`: the Hydra app (conf/config.yaml), one job per config (`rfsweep.run.job`). A single
run exits with the job's code, while in a multirun every job returns its code to Hydra so that one job's failure
never stops the others (the sweep's summary and exit status come from `rfsweep.run.summary`).

Importing this module imports what Hydra needs to compose a config and no more (`rfsweep.run.preflight` registers the
resolvers and the schema): `--help` answers without torch, and a job imports the rest when it starts
(tests/test_cli_imports.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import rfsweep.run.preflight  # noqa: F401 (registers the configs' resolvers and schema before Hydra composes)
from rfsweep.run.schema import moved_key

CONF = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def _main(cfg: DictConfig) -> int:
    from rfsweep.run.job import is_multirun, run_job  # deferred: torch and the job's libraries, not needed by --help

    code = run_job(cfg)
    if code and not is_multirun():
        sys.exit(code)
    return code


def _multirun_flag_first(argv: list[str]) -> list[str]:
    """Hydra's argparse stops reading overrides at `-m`; accept it anywhere (`... -m dry_run=true`)."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    return argv[:1] + flags + [a for a in argv[1:] if a not in ("-m", "--multirun")]


def main() -> None:
    moved = moved_key(sys.argv[1:])
    if moved:  # before Hydra, whose own message for an unknown key would not say where it went
        print(f"error: {moved}", file=sys.stderr)
        sys.exit(2)
    sys.argv = _multirun_flag_first(sys.argv)
    _main()


if __name__ == "__main__":
    main()
