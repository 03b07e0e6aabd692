"""Sweep plumbing: OmegaConf resolvers for run names and grids, and the Hydra callback that writes the
sweep's manifest (the jobs it launched) so the analysis can name missing runs."""

from __future__ import annotations

import json
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
    """A study grid from sweeps/<name>.yaml (variants, datasets, ...)."""
    path = SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"grid={name!r}: no {path} (allowed: {sorted(p.stem for p in SWEEPS_DIR.glob('*.yaml'))})")
    return yaml.safe_load(path.read_text())


def grid_choice(name: str, key: str) -> str:
    """Hydra sweep syntax `choice('a', 'b', ...)` over one list of a grid file."""
    values = read_grid(name)[key]
    return "choice(" + ", ".join("'" + str(v).replace("'", "\\'") + "'" for v in values) + ")"


def register_resolvers() -> None:
    for key, fn in (("rfsweep.slug", slug), ("rfsweep.grid_choice", grid_choice)):
        if not OmegaConf.has_resolver(key):
            OmegaConf.register_new_resolver(key, fn)


def planned_jobs(config: DictConfig) -> list[dict]:
    """Expand the sweep's parameters and command-line overrides into its jobs, as the basic sweeper does."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    overrides = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parser = OverridesParser.create()
    jobs = []
    for batch in BasicSweeper.split_arguments(parser.parse_overrides(overrides), max_batch_size=None):
        for job in batch:
            kv = {o.key_or_group: str(o.value()) for o in parser.parse_overrides(job)}  # values unquoted
            variant = kv.get("formulation.variant", OmegaConf.select(config, "formulation.variant", default=None))
            data = kv.get("data", OmegaConf.select(config, "hydra.runtime.choices.data", default=None))
            jobs.append({"variant": variant, "data": data,
                         "backbone": kv.get("backbone", OmegaConf.select(config, "hydra.runtime.choices.backbone")),
                         "seed": int(kv.get("seed", config.seed))})
    return jobs


class ManifestCallback(Callback):
    """Writes <sweep dir>/manifest.json at the start of a multirun (not for dry runs)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if config.get("dry_run"):
            return
        from hydra import compose

        labels: dict[str, str] = {}
        jobs = []
        for job in planned_jobs(config):
            if job["data"] not in labels:
                labels[job["data"]] = compose(config_name="config", overrides=[f"data={job['data']}"]).data.label
            variant = job["variant"] if job["variant"] else config.formulation
            jobs.append({"variant": variant_name(variant),
                         "dataset": labels[job["data"]], "backbone": job["backbone"], "seed": job["seed"]})
        manifest = {"jobs": jobs, "settings": [list(s) for s in config.eval.settings],
                    "weights": list(config.eval.weights)}
        with atomic_write(Path(config.hydra.sweep.dir) / MANIFEST_FILE, "w") as f:
            f.write(json.dumps(manifest, indent=1))
