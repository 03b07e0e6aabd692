"""Sweep support: the Hydra callback that checks every planned job of a multirun (the one preflight) before any
starts, and writes the sweep's manifest (the jobs it launched) so the analysis can name missing runs; and the dry run
of a sweep without Hydra's launcher (`dry_run_sweep`). The resolvers for run names and grids live in
`rfsweep.run.resolvers`."""

from __future__ import annotations

import copy
import json
import os
import pickle
import sys
import traceback
from pathlib import Path

from hydra import compose
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.defaults_list import Overrides
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from rfsweep.atomic import atomic_write
from rfsweep.errors import ConfigError, UserError
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


# A test hook: set (to anything but "" or "0"), `-m dry_run=true` goes through Hydra's sweeper and launcher as every
# other sweep does (each job composed twice, in its own job), the path `dry_run_sweep` must print the same lines as
# (tests/test_dry_run.py).
DRY_RUN_VIA_LAUNCHER = "RFSWEEP_DRY_RUN_VIA_LAUNCHER"
BASIC_SWEEPER = f"{BasicSweeper.__module__}.{BasicSweeper.__name__}"
RACE_SWEEPER = "hydra_plugins.rfsweep_launcher.race_sweeper.RaceSweeper"  # expands its jobs as the basic one


def _task_config(cfg: DictConfig) -> DictConfig:
    """A composed config without its `hydra` node, as Hydra hands it to a job (hydra.core.utils.run_job)."""
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def dry_run_configs(overrides: list[str]) -> tuple[DictConfig, list[tuple[list[str], DictConfig]]]:
    """The sweep's config (with its `hydra` node) and each planned job's overrides and config (without it), composed
    as Hydra's multirun composes them but once per distinct set of config-group overrides: a job's config is that
    composition with the job's value overrides applied the way Hydra applies them
    (`ConfigLoaderImpl._apply_overrides_to_config`), which group overrides and which value overrides told by Hydra's
    own rule (`hydra._internal.defaults_list.Overrides`, over the config repository). Identical to Hydra's own
    per-job composition (`load_sweep_config`; tests/test_dry_run.py compares them). Needs an initialized Hydra
    (`initialize_config_dir`); raises what Hydra raises for a bad override."""
    loader = GlobalHydra.instance().config_loader()
    assert isinstance(loader, ConfigLoaderImpl)
    master = loader.load_configuration(config_name="config", overrides=list(overrides), run_mode=RunMode.MULTIRUN)
    sweeper = OmegaConf.select(master, "hydra.sweeper._target_", default=None)
    if sweeper not in (BASIC_SWEEPER, RACE_SWEEPER):
        raise ValueError(f"hydra.sweeper is {sweeper}: jobs expanded as {BASIC_SWEEPER} expands them only")
    with open_dict(master.hydra):
        master.hydra.mode = RunMode.MULTIRUN
    hydra_overrides = _raw(master.hydra.overrides.hydra)
    _, repo = loader._parse_overrides_and_create_caching_repo("config", hydra_overrides)
    parser = OverridesParser.create()
    known: dict[str, tuple] = {}  # each distinct override parsed once: (Override, whether a value override)
    bases: dict[tuple[str, ...], bytes] = {}  # pickled: unpickling copies a config ~6x faster than deepcopy
    jobs = []
    for job in planned_jobs(master):
        for line in job:
            if line not in known:
                o = parser.parse_overrides([line])[0]
                known[line] = (o, bool(Overrides(repo, [o]).config_overrides))  # Hydra's rule: not a group, or a dict
        values = [known[line][0] for line in job if known[line][1]]
        groups = tuple(line for line in job if not known[line][1])
        if groups not in bases:  # what `load_sweep_config` composes, without the job's value overrides
            bases[groups] = pickle.dumps(_task_config(loader.load_configuration(
                config_name="config", overrides=[*hydra_overrides, *groups], run_mode=RunMode.RUN)))
        cfg = pickle.loads(bases[groups])  # a copy, as the submitit launcher hands a job its pickled config
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        jobs.append((list(job), cfg))
    return master, jobs


def dry_run_sweep(config_dir: str, overrides: list[str]) -> int | None:
    """`python -m rfsweep ... -m dry_run=true` without Hydra's launcher: the same lines (`rfsweep.run.plan.
    dry_run_line`, the function each job of the launcher prints), in the sweep's job order, and with a reference sweep
    the resolution block first (as `ManifestCallback` prints it). Nothing is written: no sweep folder, no
    multirun.yaml, no run folders. The exit status is the launcher path's: 0, or 2 after one line when a job would be
    refused (a bad value, a SLURM launcher's tasks that are not its ranks: `preflight`, as the sweep checks its jobs
    before any starts) or the reference sweep is refused. None when the
    sweep cannot be composed here (a bad override, a sweeper other than the basic one): the caller hands the command
    to Hydra, which reports it as before."""
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=config_dir, version_base="1.3", job_name="__main__"):
        try:
            master, jobs = dry_run_configs(overrides)
        except Exception:
            return None
        HydraConfig.instance().set_config(master)  # the launcher's node memory (launcher_mem_gb), as a job reads it
        seen: dict = {}
        for job, cfg in jobs:  # a job the sweep would refuse stops the plan, as `ManifestCallback` stops the sweep
            try:
                _check_job(master, cfg, job, seen)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr, flush=True)
                return 2
        from rfsweep.run.plan import dry_run_line  # deferred: torch, not needed by --help

        if master.get("reference_sweep"):
            print_expected_resolution(master, [cfg for _, cfg in jobs])
        for _, cfg in jobs:
            _print_job_line(cfg, dry_run_line)
        if OmegaConf.select(master, "hydra.sweeper._target_") == RACE_SWEEPER:
            from rfsweep.run.race_control import print_dry_run_plan, race_conf

            return print_dry_run_plan(race_conf(master.hydra.sweeper), master, [job for job, _ in jobs])
    return 0


def _print_job_line(cfg: DictConfig, dry_run_line) -> None:
    """One job's line, or its error as the job reports it (rfsweep.run.job: bad input in one line, a bug with its
    traceback); the other jobs go on."""
    try:
        try:
            line = dry_run_line(cfg)
        except InstantiationException as e:  # hydra wraps what a configured class raises: report the cause
            if isinstance(e.__cause__, (UserError, FileNotFoundError)):
                raise e.__cause__ from None
            raise
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return
    except Exception as e:
        traceback.print_exception(type(e), e, e.__traceback__)
        return
    print(line, flush=True)


def print_expected_resolution(config: DictConfig, cfgs: list[DictConfig]) -> None:
    """With `reference_sweep`: the resolution the planned jobs can expect, printed once for the sweep; a refused
    reference sweep stops the sweep (exit 2)."""
    from rfsweep.run.plan import expected_resolution  # deferred: torch, for a reference sweep only

    try:
        print(expected_resolution(str(config.reference_sweep), cfgs), flush=True)
    except UserError as e:
        _refuse(str(e))


def _refuse(message: str) -> None:
    """Stop a sweep before any job starts: one line, exit status 2 (bad input)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _check_race(config: DictConfig, job: DictConfig) -> None:
    """A race's own requirement of each of its jobs `job` (`race_control.check_rung_evaluator`), the sweep's config
    `config` naming the sweeper; nothing for other sweepers."""
    if OmegaConf.select(config, "hydra.sweeper._target_") == RACE_SWEEPER:
        from rfsweep.run.race_control import check_rung_evaluator  # deferred: a race only

        check_rung_evaluator(job)


def _check_folder(seen: dict, folder: str, overrides: list[str]) -> None:
    """Two jobs of one sweep never share a run folder: ConfigError (one line) for the second; `seen` maps the folders
    of the jobs checked so far to their overrides."""
    if folder in seen:
        raise ConfigError(f"sweep jobs [{' '.join(seen[folder])}] and [{' '.join(overrides)}] share the run folder "
                          f"{folder} (allowed: swept keys that change the folder: formulation, data, seed, "
                          f"backbone.label; e.g. backbone.label=mmdit_d${{backbone.depth}}) (no job started)")
    seen[folder] = overrides


def _check_job(config: DictConfig, cfg: DictConfig, overrides: list[str], seen: dict) -> str:
    """One planned job `cfg` of the sweep `config` checked as the sweep checks it before any job starts (`preflight`
    without the data folder, which a dry run may leave unset; a race's own requirement; its run folder not another
    job's, `seen`); returns its variant's name. UserError with the sweep's one line otherwise."""
    try:
        preflight(cfg, mem_gb=OmegaConf.select(config, "hydra.launcher.mem_gb", default=None), data=False,
                  launcher=OmegaConf.select(config, "hydra.launcher", default=None), plan=bool(config.get("dry_run")))
        _check_race(config, cfg)
        variant = variant_name(cfg.formulation)
    except UserError as e:
        raise ConfigError(f"sweep job [{' '.join(overrides)}]: {e} (no job started)") from None
    _check_folder(seen, str(cfg.job_name), overrides)
    return variant


def _checked_jobs(config: DictConfig) -> tuple[list[dict], list[DictConfig]]:
    """Every planned job of the sweep `config` composed and checked (`preflight` without the data folder, which a dry
    run may leave unset): its manifest entry and its config. A bad value in any job, or two jobs that would share a
    run folder, stop the sweep with one line (exit 2) before any job starts."""
    jobs, cfgs, seen = [], [], {}
    for overrides in planned_jobs(config):
        cfg = compose(config_name="config", overrides=overrides)
        try:
            variant = _check_job(config, cfg, overrides, seen)
        except UserError as e:
            _refuse(str(e))
        cfgs.append(cfg)
        jobs.append({"variant": variant, "dataset": str(cfg.data.label), "backbone": str(cfg.backbone.label),
                     "seed": int(cfg.seed), "run": str(cfg.job_name)})
    return jobs, cfgs


class ManifestCallback(Callback):
    """Writes <sweep dir>/manifest.json at the start of a multirun (not for dry runs): every planned job's variant,
    dataset and backbone labels, seed and run folder. Every job's config is checked first: a bad value in any job (an
    unknown variant, a value out of range) or two jobs that would share a run folder (a swept key the folder name does
    not show, e.g. backbone.depth without a label per depth) stop the sweep with one line before any job runs."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        jobs, cfgs = _checked_jobs(config)  # a dry run too: its plan is of jobs that would start
        if config.get("dry_run"):  # nothing written; with a reference sweep, the resolution the plan can expect
            if config.get("reference_sweep"):
                print_expected_resolution(config, cfgs)
            return
        manifest = {"experiment": str(config.name), "jobs": jobs, "settings": [list(s) for s in config.eval.settings],
                    "weights": list(config.eval.weights),
                    "ema_lengths": [float(x) for x in (config.eval.get("ema_lengths") or [])],
                    # the launch command, so `python -m analysis status --resubmit` can launch it again
                    "command": {"task": _raw(config.hydra.overrides.task),
                                "hydra": _raw(config.hydra.overrides.hydra)}, "cwd": os.getcwd()}
        with atomic_write(Path(config.hydra.sweep.dir) / MANIFEST_FILE, "w") as f:
            f.write(json.dumps(manifest, indent=1))
