"""rfsweep's SLURM launcher (`hydra/launcher=slurm`): hydra-submitit-launcher's SlurmLauncher with four changes
a sweep on a real cluster needs.

1. Runs that are finished, or trained right now by a live process (a fresh lease), are left out before
   submission: they take no allocation, and relaunching a 122-job sweep submits only what is left.
2. A job that ends without a result (scancel before or while it ran, out of memory, a node failure, too many
   timeouts) does not stop the launcher from collecting the others: its SLURM state is recorded in the run's
   outcome (and in its status if the job could not), and the sweep's summary lists it.
3. The job array is submitted with submitit's own `map_array`, so SLURM's pre-emption signal reaches submitit's
   handler, which rfsweep's job calls after its checkpoint (`rfsweep.cluster.signals`).
4. A job whose tasks (`tasks_per_node` x `nodes`) are not its ranks (`trainer.devices` x `trainer.num_nodes`) stops
   the sweep before any submission (`rfsweep.run.preflight.check_launcher_tasks`): one task per rank.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


def _returned(overrides, cfg, code: int) -> JobReturn:
    """A JobReturn that Hydra's sweeper accepts (COMPLETED: the outcome itself is in the run folder)."""
    return JobReturn(overrides=list(overrides), cfg=cfg, status=JobStatus.COMPLETED, _return_value=code,
                     task_name="rfsweep", working_dir=str(cfg.run_dir) if cfg is not None else None)


def skip_reason(cfg) -> tuple[str, str] | None:
    """(outcome, reason) for a job that must not be submitted, else None."""
    from rfsweep.cluster.lease import describe, is_stale, read_lease
    from rfsweep.errors import ConfigError
    from rfsweep.run.job import run_finished
    from rfsweep.runfolder import check_config

    try:
        task = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])  # what the job will see
        check_config(cfg.run_dir, OmegaConf.to_container(task, resolve=True))
    except ConfigError as e:
        return "refused", str(e)
    if run_finished(cfg):
        return "skipped", "finished earlier"
    lease = read_lease(cfg.run_dir)
    if lease and not is_stale(lease, float(cfg.cluster.lease_timeout_s)):
        return "refused", f"running elsewhere: {describe(lease)}"
    return None


def refuse_tasks(cfg, overrides) -> None:
    """A job whose SLURM tasks (hydra.launcher.tasks_per_node x nodes) are not its ranks stops the sweep before any
    submission: one line, exit status 2 (the sweep's callback refuses it earlier; a dry run through the launcher and
    a relaunch of some jobs come here only)."""
    from rfsweep.errors import UserError
    from rfsweep.run.preflight import check_launcher_tasks

    try:
        check_launcher_tasks(cfg, cfg.hydra.launcher)
    except UserError as e:
        print(f"error: sweep job [{' '.join(overrides)}]: {e} (no job submitted)", file=sys.stderr, flush=True)
        sys.exit(2)


class RfsweepSlurmLauncher(SlurmLauncher):
    def __call__(self, *args, **kwargs) -> JobReturn:
        """In the SLURM job: rfsweep's pre-emption guard first (submitit's handler stands in until then), then
        the job as hydra-submitit runs it."""
        from rfsweep.cluster.signals import job_guard

        job_guard().install()
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from rfsweep import runfolder
        from rfsweep.run.job import LAUNCH_ENV

        assert self.config is not None and self.hydra_context is not None
        launch = os.environ.get(LAUNCH_ENV)
        loader = self.hydra_context.config_loader
        returns: dict[int, JobReturn] = {}
        todo: list[tuple[int, list[str], object]] = []
        cfgs = [loader.load_sweep_config(self.config, list(overrides)) for overrides in job_overrides]
        for overrides, cfg in zip(job_overrides, cfgs):  # every job's tasks, before anything is written or submitted
            refuse_tasks(cfg, overrides)
        for i, (overrides, cfg) in enumerate(zip(job_overrides, cfgs)):
            with open_dict(cfg):  # the job's folder as run_job will make it (no HydraConfig in the launcher)
                cfg.run_dir = str(Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir))
            why = None if cfg.get("dry_run") else skip_reason(cfg)
            if why is None:
                todo.append((i, list(overrides), cfg))
                continue
            outcome, reason = why
            log.info(f"\t#{initial_job_idx + i} not submitted ({outcome}: {reason}): {' '.join(overrides)}")
            runfolder.write_outcome(cfg.run_dir, outcome, reason, launch=launch)
            returns[i] = _returned(overrides, cfg, 0 if outcome == "skipped" else 2)
        if todo:
            jobs = self._submit([(initial_job_idx + i, ov) for i, ov, _ in todo])
            for (i, overrides, cfg), job in zip(todo, jobs):
                returns[i] = self._collect(job, overrides, cfg, launch)
        return [returns[i] for i in range(len(job_overrides))]

    def _submit(self, numbered: list[tuple[int, list[str]]]):
        import submitit

        params = dict(self.params)
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params.pop("submitit_folder"),
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in generic else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitting {len(numbered)} jobs to SLURM; sweep output dir: {sweep_dir}")
        args = []
        for num, overrides in numbered:
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            args.append((overrides, "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        return executor.map_array(self, *zip(*args))

    def _collect(self, job, overrides, cfg, launch: str | None) -> JobReturn:
        """The job's JobReturn, or, for a job that produced none, its SLURM state recorded in the run folder."""
        from rfsweep import runfolder

        try:
            return job.results()[0]
        except Exception as e:  # UncompletedJobError, FailedJobError: cancelled, killed, node failure, ...
            state = job.state
            outcome = "cancelled" if state.startswith("CANCELLED") else "failed"
            reason = f"SLURM job {job.job_id} {state}: {str(e).splitlines()[0][:300]}"
            log.warning(f"job {job.job_id} ({' '.join(overrides)}) ended without a result: {state}")
            run = Path(cfg.run_dir)
            if runfolder.read_outcome(run).get("launch") != launch or not launch:
                runfolder.write_outcome(run, outcome, reason, launch=launch, slurm_job=job.job_id)
            status = runfolder.read_status(run)
            if status.get("state") in (None, "running"):  # the job could not say it stopped
                runfolder.write_status(run, outcome, step=status.get("step"), reason=reason, slurm_job=job.job_id)
            return _returned(overrides, cfg, 1)
