"""One preflight: every check a composed config gets before any compute. Each entry point calls `preflight(cfg)`
with its composed config (the job, every planned job of a multirun, precompute); importing this module registers the
resolvers and the schema the configs need (`rfsweep.run.resolvers`), so no entry point has to remember them.

The checks, in order: the schema's rules and the cross-key checks (`rfsweep.run.config.validate`), the formulation's
name (the registry of `rfsweep.formulations`) and its training shift, the GPU memory plan (gpu jobs) and the node's
memory when a launcher asks for some (`rfsweep.run.memory`), and, for a job that will evaluate pre-encoded data, the
reference images its evaluation needs. Each failure is a `rfsweep.errors.UserError` with one line naming the key and
what is allowed.

`python -m rfsweep` imports this module before Hydra composes, `--help` included: it and what it imports at the top
(`builders`, `config`, `memory`, `resolvers`, `schema`) import neither torch nor Lightning nor pandas; those are
imported inside the functions that need them (tests/test_cli_imports.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from rfsweep.run.builders import encoding, formulation_for
from rfsweep.run.config import validate
from rfsweep.run.memory import check_fits, check_host_fits, launcher_mem_gb
from rfsweep.run.resolvers import register_resolvers

if TYPE_CHECKING:
    from rfsweep.formulations import Formulation

register_resolvers()


def preflight(cfg: DictConfig, mem_gb: float | None = None, data: bool = True) -> Formulation:
    """Check `cfg` before any compute; returns its formulation. `mem_gb`: the node memory a launcher asks for (a
    sweep passes `hydra.launcher.mem_gb`; a job reads its own launcher's). `data=False` skips what reads the data
    folder (a sweep checks its planned jobs before their data need to exist on this node)."""
    validate(cfg)
    formulation = formulation_for(cfg)
    if cfg.trainer.accelerator == "gpu":
        check_fits(cfg)
    check_host_fits(cfg, mem_gb or launcher_mem_gb())
    if data and cfg.data.name == "precomputed" and cfg.eval.enabled:
        from rfsweep.data.precomputed import check_reference_images  # deferred: torch, not needed by --help

        check_reference_images(cfg.data.path, expect=encoding(cfg))  # before training, not at its end
    return formulation
