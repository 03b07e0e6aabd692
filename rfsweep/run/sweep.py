"""Sweep support: the Hydra callback that checks every planned job of a multirun (the one preflight) before any
starts, and writes the sweep's manifest (the jobs it launched) so the analysis can name missing runs. The resolvers
for run names and grids live in `rfsweep.run.resolvers`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rfsweep.atomic import atomic_write
from rfsweep.errors import UserError
from rfsweep.results import MANIFEST_FILE
from rfsweep.run.builders import variant_name
from rfsweep.run.preflight import preflight


def _raw(node) -> list[str]:
    """Command-line overrides as typed (an interpolation such as backbone.label=d${backbone.depth} stays one)."""
    return list(OmegaConf.to_container(node, resolve=False))


def planned_jobs(config: DictConfig) -> list[list[str]]:
    """The sweep's jobs, each as its list of overrides, expanded from the sweep's parameters and the command-line
    overrides as the basic sweeper does."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    overrides = [f"{k}={v}" for k, v in params.items()] + _raw(config.hydra.overrides.task)
    parser = OverridesParser.create()
    return [list(job) for batch in BasicSweeper.split_arguments(parser.parse_overrides(overrides), max_batch_size=None)
            for job in batch]


def _refuse(message: str) -> None:
    """Stop a sweep before any job starts: one line, exit status 2 (bad input)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class ManifestCallback(Callback):
    """Writes <sweep dir>/manifest.json at the start of a multirun (not for dry runs): every planned job's variant,
    dataset and backbone labels, seed and run folder. Every job's config is checked first: a bad value in any job (an
    unknown variant, a value out of range) or two jobs that would share a run folder (a swept key the folder name does
    not show, e.g. backbone.depth without a label per depth) stop the sweep with one line before any job runs."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if config.get("dry_run"):  # nothing written; with a reference sweep, the resolution the plan can expect
            if config.get("reference_sweep"):
                from rfsweep.run.plan import expected_resolution  # deferred: torch, for a reference sweep only

                cfgs = [compose(config_name="config", overrides=o) for o in planned_jobs(config)]
                try:
                    print(expected_resolution(str(config.reference_sweep), cfgs), flush=True)
                except UserError as e:
                    _refuse(str(e))
            return

        jobs, seen = [], {}
        for overrides in planned_jobs(config):
            cfg = compose(config_name="config", overrides=overrides)
            try:
                preflight(cfg, mem_gb=OmegaConf.select(config, "hydra.launcher.mem_gb", default=None), data=False)
                variant = variant_name(cfg.formulation)
            except UserError as e:
                _refuse(f"sweep job [{' '.join(overrides)}]: {e} (no job started)")
            folder = str(cfg.job_name)
            if folder in seen:
                _refuse(f"sweep jobs [{' '.join(seen[folder])}] and [{' '.join(overrides)}] share the run folder "
                        f"{folder} (allowed: swept keys that change the folder: formulation, data, seed, "
                        f"backbone.label; e.g. backbone.label=mmdit_d${{backbone.depth}})")
            seen[folder] = overrides
            jobs.append({"variant": variant, "dataset": str(cfg.data.label),
                         "backbone": str(cfg.backbone.label), "seed": int(cfg.seed), "run": folder})
        manifest = {"experiment": str(config.name), "jobs": jobs, "settings": [list(s) for s in config.eval.settings],
                    "weights": list(config.eval.weights),
                    "ema_lengths": [float(x) for x in (config.eval.get("ema_lengths") or [])],
                    # the launch command, so `python -m analysis status --resubmit` can launch it again
                    "command": {"task": _raw(config.hydra.overrides.task),
                                "hydra": _raw(config.hydra.overrides.hydra)}, "cwd": os.getcwd()}
        with atomic_write(Path(config.hydra.sweep.dir) / MANIFEST_FILE, "w") as f:
            f.write(json.dumps(manifest, indent=1))
