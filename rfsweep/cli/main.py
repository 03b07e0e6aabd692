"""`python -m rfsweep [overrides]`: the Hydra app (conf/config.yaml), one job per config (`rfsweep.run.job`). A single
run exits with the job's code, while in a multirun every job returns its code to Hydra so that one job's failure
never stops the others (the sweep's summary and exit status come from `rfsweep.run.summary`). A multirun dry run
(`-m dry_run=true`) is printed without Hydra's launcher (`rfsweep.run.sweep.dry_run_sweep`: the same lines, each job's
config composed as Hydra composes it, nothing written).

Importing this module imports what Hydra needs to compose a config and no more (`rfsweep.run.preflight` registers the
resolvers and the schema): `--help` answers without torch, and a job imports the rest when it starts
(tests/test_cli_imports.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
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


def wants_fast_dry_run(args: list[str]) -> bool:
    """`args` (the command line after the program) ask for a multirun dry run that `rfsweep.run.sweep.dry_run_sweep`
    can do: `-m`, a `dry_run=true` override, no other Hydra flag (--cfg, --info, -cn, ...), and the test hook
    RFSWEEP_DRY_RUN_VIA_LAUNCHER (rfsweep.run.sweep.DRY_RUN_VIA_LAUNCHER) unset."""
    if os.environ.get("RFSWEEP_DRY_RUN_VIA_LAUNCHER", "") not in ("", "0"):
        return False
    if not any(a in ("-m", "--multirun") for a in args):
        return False
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in overrides):
        return False
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra says what is wrong, as before
        return False
    dry = [o for o in parsed if o.key_or_group == "dry_run" and o.package is None and not o.is_delete()]
    return bool(dry) and not dry[-1].is_sweep_override() and dry[-1].value() is True


def main() -> None:
    moved = moved_key(sys.argv[1:])
    if moved:  # before Hydra, whose own message for an unknown key would not say where it went
        print(f"error: {moved}", file=sys.stderr)
        sys.exit(2)
    sys.argv = _multirun_flag_first(sys.argv)
    if wants_fast_dry_run(sys.argv[1:]):
        from rfsweep.run.sweep import dry_run_sweep  # deferred: not needed by --help or a single run

        code = dry_run_sweep(CONF, [a for a in sys.argv[1:] if a not in ("-m", "--multirun")])
        if code is not None:  # None: not composable here; Hydra reports it as for any sweep
            sys.exit(code)
    _main()


if __name__ == "__main__":
    main()
