"""One preflight: every check a composed config gets before any compute. Each entry point calls `preflight(cfg)`
with its composed config (the job, every planned job of a multirun, precompute); importing this module registers the
resolvers and the schema the configs need (`rfsweep.run.resolvers`), so no entry point has to remember them.

The checks, in order: the schema's rules and the cross-key checks (`rfsweep.run.config.validate`), the formulation's
name (the registry of `rfsweep.formulations`) and its training shift, the GPU memory plan (gpu jobs) and the node's
memory when a launcher asks for some (`rfsweep.run.memory`), the SLURM tasks that will start the job's ranks (one task
per rank: the sweep's launcher, or inside a job its allocation), and, for a job that will evaluate pre-encoded data,
the reference images its evaluation needs. Each failure is a `rfsweep.errors.UserError` with one line naming the key and
what is allowed.

`python -m rfsweep` imports this module before Hydra composes, `--help` included: it and what it imports at the top
(`builders`, `config`, `memory`, `resolvers`, `schema`) import neither torch nor Lightning nor pandas; those are
imported inside the functions that need them (tests/test_cli_imports.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from rfsweep.errors import ConfigError
from rfsweep.run.builders import encoding, formulation_for
from rfsweep.run.config import validate
from rfsweep.run.memory import check_fits, check_host_fits, launcher_mem_gb
from rfsweep.run.resolvers import register_resolvers

if TYPE_CHECKING:
    from rfsweep.formulations import Formulation

register_resolvers()


def preflight(cfg: DictConfig, mem_gb: float | None = None, data: bool = True,
              launcher: DictConfig | None = None, plan: bool = False) -> Formulation:
    """Check `cfg` before any compute; returns its formulation. `mem_gb`: the node memory a launcher asks for (a
    sweep passes `hydra.launcher.mem_gb`; a job reads its own launcher's). `launcher`: the sweep's `hydra.launcher`,
    whose SLURM tasks must be the job's ranks. `data=False`: a config checked away from the process that trains it (a
    sweep's planned jobs, precompute's config): what reads the data folder (which need not exist on this node yet)
    and this process's SLURM allocation are skipped. `plan=True` (a dry run, with `data=False`): the data folder may
    be unset too."""
    validate(cfg, plan=plan)
    formulation = formulation_for(cfg)
    if cfg.trainer.accelerator == "gpu":
        check_fits(cfg)
    check_host_fits(cfg, mem_gb or launcher_mem_gb())
    if launcher is not None:
        check_launcher_tasks(cfg, launcher)
    elif data:
        check_allocation(cfg)
    if data and cfg.data.name == "precomputed" and cfg.eval.enabled:
        from rfsweep.data.precomputed import check_reference_images  # deferred: torch, not needed by --help

        check_reference_images(cfg.data.path, expect=encoding(cfg))  # before training, not at its end
    return formulation


def _ranks(cfg: DictConfig) -> str:
    tr = cfg.trainer
    return (f"trainer.devices={tr.devices} x trainer.num_nodes={tr.num_nodes} = "
            f"{int(tr.devices) * int(tr.num_nodes)} rank(s)")


def check_launcher_tasks(cfg: DictConfig, launcher: DictConfig) -> None:
    """Refuse (ConfigError, one line) a job that a SLURM launcher would start with another number of tasks than its
    ranks: SLURM starts one task per rank (`hydra.launcher.tasks_per_node` x `hydra.launcher.nodes`), and Lightning
    would otherwise refuse only inside the allocation, after the job waited in the queue. Other launchers: nothing."""
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return
    tasks_per_node, nodes = int(launcher.get("tasks_per_node", 1)), int(launcher.get("nodes", 1))
    tr = cfg.trainer
    if tasks_per_node * nodes != int(tr.devices) * int(tr.num_nodes):
        raise ConfigError(f"config error: hydra.launcher.tasks_per_node={tasks_per_node} x hydra.launcher.nodes="
                          f"{nodes} = {tasks_per_node * nodes} SLURM task(s) for {_ranks(cfg)} (allowed: one task "
                          f"per rank: hydra.launcher.tasks_per_node={tr.devices} hydra.launcher.nodes={tr.num_nodes}, "
                          f"with as many GPUs per node, hydra.launcher.gpus_per_node={tr.devices} on GPUs)")


def check_allocation(cfg: DictConfig, env=None) -> None:
    """Inside a SLURM job (SLURM_NTASKS set): refuse (ConfigError, one line) ranks that are not its tasks, before
    anything is built. Not in an interactive allocation (job name bash or interactive, as Lightning's
    SLURMEnvironment reads it), where Lightning starts the ranks itself; a one-task job of one device passes."""
    env = os.environ if env is None else env
    tasks = env.get("SLURM_NTASKS")
    if tasks is None or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return
    if int(tasks) != int(cfg.trainer.devices) * int(cfg.trainer.num_nodes):
        raise ConfigError(f"config error: {_ranks(cfg)}, but this SLURM job has SLURM_NTASKS={tasks} task(s) "
                          f"(allowed: one task per rank: trainer.devices x trainer.num_nodes = SLURM_NTASKS, e.g. "
                          f"hydra.launcher.tasks_per_node=trainer.devices with hydra.launcher.nodes=trainer.num_nodes)")
