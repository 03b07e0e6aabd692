"""Sweep plumbing: OmegaConf resolvers for run names and grids, and the Hydra callback that writes the
sweep's manifest (the jobs it launched) so the analysis can name missing runs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rfsweep.atomic import atomic_write
from rfsweep.formulations import VariantError, build_formulation
from rfsweep.results import MANIFEST_FILE

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"


def formulation_spec(node):
    """What `build_formulation` takes, from a formulation config node (`variant: <name>` or family + parameters)."""
    spec = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return spec["variant"] if isinstance(spec, dict) and "variant" in spec else spec


def variant_name(node) -> str:
    """Canonical paper name of a formulation config node."""
    return build_formulation(formulation_spec(node)).name


def slug(node) -> str:
    """A file-system friendly name: rf/lognorm(0.00, 1.00) -> rf-lognorm_0.00_1.00."""
    try:
        name = variant_name(node)
    except VariantError:  # reported with its one-line message once the job starts
        name = str(node.get("variant", "invalid") if OmegaConf.is_config(node) else node)
    return name_slug(name)


def name_slug(name: str) -> str:
    """rf/lognorm(0.00, 1.00) -> rf-lognorm_0.00_1.00 (the run folder's variant part)."""
    return name.replace("/", "-").replace("(", "_").replace(")", "").replace(", ", "_").replace(" ", "")


def read_grid(name: str) -> dict:
    """A study grid from sweeps/<name>.yaml (variants, datasets, ...); `include: <grid>` takes the keys it does not
    set from another grid."""
    path = SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        allowed = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"grid={name!r}: no {path} (allowed: {allowed})")
    grid = yaml.safe_load(path.read_text())
    base = grid.pop("include", None)
    return {**read_grid(base), **grid} if base else grid


def grid_choice(name: str, key: str) -> str:
    """Hydra sweep syntax `choice('a', 'b', ...)` over one list of a grid file."""
    values = read_grid(name)[key]
    return "choice(" + ", ".join("'" + str(v).replace("'", "\\'") + "'" for v in values) + ")"


def paper_settings() -> list[list]:
    """The paper's six sampler settings as config values (one home: rfsweep.results.SETTINGS)."""
    from rfsweep.results import SETTINGS

    return [[s, c] for s, c in SETTINGS]


def register_resolvers() -> None:
    """The resolvers the configs use, and the config schema (rfsweep.schema)."""
    from rfsweep.schema import register_schemas

    register_schemas()
    for key, fn in (("rfsweep.slug", slug), ("rfsweep.grid_choice", grid_choice),
                    ("rfsweep.paper_settings", paper_settings)):
        if not OmegaConf.has_resolver(key):
            OmegaConf.register_new_resolver(key, fn)


def _raw(node) -> list[str]:
    """Command-line overrides as typed (an interpolation such as backbone.label=d${backbone.depth} stays one)."""
    return list(OmegaConf.to_container(node, resolve=False))


def planned_jobs(config: DictConfig) -> list[list[str]]:
    """The sweep's jobs, each as its list of overrides, expanded from the sweep's parameters and the command-line
    overrides as the basic sweeper does."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

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
        if config.get("dry_run"):
            return
        from hydra import compose

        from rfsweep.config import ConfigError, validate

        jobs, seen = [], {}
        for overrides in planned_jobs(config):
            cfg = compose(config_name="config", overrides=overrides)
            try:
                validate(cfg, mem_gb=OmegaConf.select(config, "hydra.launcher.mem_gb", default=None))
                variant = variant_name(cfg.formulation)
            except (ConfigError, VariantError) as e:
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
                    # the launch command, so `python -m analysis status --resubmit` can launch it again
                    "command": {"task": _raw(config.hydra.overrides.task),
                                "hydra": _raw(config.hydra.overrides.hydra)}, "cwd": os.getcwd()}
        with atomic_write(Path(config.hydra.sweep.dir) / MANIFEST_FILE, "w") as f:
            f.write(json.dumps(manifest, indent=1))
