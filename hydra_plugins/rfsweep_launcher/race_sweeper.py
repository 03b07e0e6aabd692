"""`hydra/sweeper=race`: Hydra's basic sweeper over the same grid (jobs expand as `hydra/sweeper=grid` expands them),
run as a race of rungs (`rfsweep.run.race_control`) through the configured launcher."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from rfsweep.errors import UserError
from rfsweep.results import MANIFEST_FILE


class RaceSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict] = None, rungs=(0.25, 0.5),
                 top: int = 3, margins=None, calibration: Optional[str] = None, calibrate: bool = False,
                 keep: float = 0.1, audit: int = 1, bootstrap: int = 1000, seed: int = 0) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.race = dict(rungs=list(rungs), top=int(top), margins=None if margins is None else list(margins),
                         calibration=calibration, calibrate=bool(calibrate), keep=float(keep), audit=int(audit),
                         bootstrap=int(bootstrap), seed=int(seed))

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        from rfsweep.run.race_control import Job, print_dry_run_plan, race_conf, run_race  # deferred: torch

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        batch = [job for chunk in self.split_arguments(overrides, None) for job in chunk]
        if self.config.get("dry_run"):  # every job's line, as the grid sweeper prints it, then the race's plan
            out = super().sweep(arguments)
            code = print_dry_run_plan(race_conf(self.race), self.config, batch)
            if code:
                sys.exit(code)
            return out
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        manifest = json.loads((sweep_dir / MANIFEST_FILE).read_text())["jobs"]
        if len(manifest) != len(batch):
            raise RuntimeError(f"race: {len(batch)} jobs but the manifest lists {len(manifest)}")
        jobs = [Job(list(o), m["variant"], m["run"]) for o, m in zip(batch, manifest)]
        launched = {"n": 0}

        def launch(batch: list[list[str]]) -> None:
            if not batch:
                return
            self.validate_batch_is_legal(batch)
            for r in self.launcher.launch(batch, initial_job_idx=launched["n"]):
                _ = r.return_value  # a job that raised (it never should: jobs end in exit codes) surfaces here
            launched["n"] += len(batch)

        try:
            code = run_race(race_conf(self.race), sweep_dir, int(self.config.trainer.max_steps),
                            int(self.config.trainer.batch_size), jobs, launch)
        except (UserError, ValueError) as e:  # a bad value, a damaged decision log or rung results: one line
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        if code:
            sys.exit(code)
        return []
