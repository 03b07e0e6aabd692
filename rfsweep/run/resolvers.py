"""The resolvers the configs use (`${rfsweep.slug:...}`, `${rfsweep.grid_choice:...}`, `${rfsweep.paper_settings:}`)
and the study grids they read (sweeps/<grid>.yaml). Registered once, when `rfsweep.run.preflight` is imported."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf

from rfsweep.formulations import VariantError, name_slug
from rfsweep.run.builders import variant_name
from rfsweep.run.schema import register_schemas

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"


def slug(node, shift=None) -> str:
    """A file-system friendly name: rf/lognorm(0.00, 1.00) -> rf-lognorm_0.00_1.00; with a training shift (Sec.
    5.3.2: trainer.shift) it is part of the name, rf-lognorm_0.00_1.00-shift3, so a shifted run has its own folder."""
    try:
        name = variant_name(node)
    except VariantError:  # reported with its one-line message once the job starts
        name = str(node.get("variant", "invalid") if OmegaConf.is_config(node) else node)
    return name_slug(name) + ("" if shift is None else f"-shift{shift:g}" if isinstance(shift, (int, float))
                              else f"-shift{shift}")


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
    from rfsweep.results import SETTINGS  # deferred: rfsweep.results imports pandas (~0.3 s), not needed by --help

    return [[s, c] for s, c in SETTINGS]


def register_resolvers() -> None:
    """The resolvers the configs use, and the config schema (rfsweep.run.schema)."""
    register_schemas()
    for key, fn in (("rfsweep.slug", slug), ("rfsweep.grid_choice", grid_choice),
                    ("rfsweep.paper_settings", paper_settings)):
        if not OmegaConf.has_resolver(key):
            OmegaConf.register_new_resolver(key, fn)
