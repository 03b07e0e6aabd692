"""W&B tracking, in one home: one W&B run per job, opened when the job starts work and finished when it ends (failed
with the reason, or pre-empted), whatever launcher runs it; offline unless credentials for the W&B server are
configured, so a run never waits on the network (`python -m analysis wandb-sync SWEEP` uploads later).

A run's id is fixed by its run folder, so a job that resumes or only evaluates logs to the same W&B run (online
it resumes it; offline each launch writes an `offline-run-*` folder with that id, and `wandb sync` appends them).
Its config carries at the top level what a dashboard groups by (`GROUP_KEYS`); its group is the experiment and its
job type `train`, `evaluate` (a launch that only evaluates) or `analysis` (the study's tables). Every metric is
plotted against `trainer/global_step`; the lowest EMA validation loss and its step are the run's summary.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rfsweep.fence import LeaseLost, permits
from rfsweep.formulations.weighting import measure
from rfsweep.metrics import metric_names
from rfsweep.run.builders import train_shift
from rfsweep.types import RunMeta
from rfsweep.wandb_env import has_credentials, run_id, wandb_mode  # noqa: F401 (the job's W&B run uses them)

GROUP_KEYS = ("variant", "family", "dataset", "backbone", "seed", "experiment", "params", "depth", "train_shift")
STEP = "trainer/global_step"
def run_config(cfg: DictConfig, meta: RunMeta, params: int | None = None, depth: int | None = None) -> dict:
    """The W&B config: the grouping keys at the top level, the resolved run config below `run`."""
    keys = {"variant": meta.variant, "family": meta.family, "dataset": meta.dataset,
            "backbone": meta.backbone, "seed": int(meta.seed), "experiment": str(cfg.name),
            "params": params, "depth": depth, "train_shift": train_shift(cfg)}
    return {**keys, "run": OmegaConf.to_container(cfg, resolve=True)}


def open_run(cfg: DictConfig, run_dir: Path, config: dict, job_type: str, name: str | None = None):
    """A W&B run for this job (wandb.init with the stable id); the caller finishes it."""
    import wandb  # deferred: wandb (~0.5 s), only a run that logs to W&B needs it

    if os.environ.get("WANDB_MODE") == "":  # wandb refuses an empty mode; empty means unset
        del os.environ["WANDB_MODE"]
    mode = wandb_mode()
    settings = wandb.Settings(init_timeout=30, silent=True, console="off", x_disable_stats=True)
    run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, id=run_id(run_dir),
                     name=name or str(cfg.job_name), group=str(cfg.name), job_type=job_type, dir=str(run_dir),
                     config=config, mode="offline" if mode in ("offline", "dryrun") else mode,
                     resume="allow" if mode == "online" else None, reinit="create_new", settings=settings,
                     tags=[f"{k}:{config[k]}" for k in ("family", "variant", "dataset", "backbone")])
    run.define_metric(STEP)
    run.define_metric("*", step_metric=STEP, step_sync=True)
    run.define_metric("val/loss_ema", summary="min", step_metric=STEP)
    run.define_metric("val/loss_raw", summary="min", step_metric=STEP)
    return run


class JobRun:
    """The W&B run of one job, or nothing when `logger.wandb` is off. `finish(outcome, reason)` ends it: `done`
    finishes it, `preempted` marks it pre-empted, anything else marks it failed with the reason. W&B's folder lies in
    the run folder: nothing is logged once the run folder's write fence says it is another process's."""

    def __init__(self, cfg: DictConfig, run_dir: Path, meta: RunMeta, job_type: str, params=None, depth=None):
        self.run, self.run_dir = None, Path(run_dir)
        if cfg.logger.wandb:
            self.run = open_run(cfg, run_dir, run_config(cfg, meta, params, depth), job_type)

    def lightning_logger(self):
        from lightning.pytorch.loggers import WandbLogger  # deferred: lightning, not needed by a dry run

        run_dir = self.run_dir

        class FencedWandbLogger(WandbLogger):  # Lightning's metrics, inside the run folder's write fence
            def log_metrics(self, metrics, step=None):
                if permits(run_dir):
                    super().log_metrics(metrics, step)

        return FencedWandbLogger(experiment=self.run) if self.run is not None else None

    def log(self, values: dict, step: int) -> None:
        if self.run is not None and permits(self.run_dir):
            self.run.log({**values, STEP: step})

    def summary(self, values: dict) -> None:
        if self.run is not None and permits(self.run_dir):
            self.run.summary.update(values)

    def log_samples(self, path: Path, captions: list[str], step: int) -> None:
        if self.run is not None:
            import wandb  # deferred: wandb (~0.5 s), only a run that logs to W&B needs it

            self.log({"samples/grid": wandb.Image(str(path), caption=" | ".join(captions))}, step)

    def log_formulation(self, formulation) -> None:
        """The run's formulation as it trains (`rfsweep.formulations.weighting`): its density of log-SNR, loss weight
        and effective weight over lambda, measured from its own `sample_t` and `loss`, beside the paper's closed form,
        as a table and a line plot of the effective weight."""
        if self.run is None:
            return
        import wandb  # deferred: wandb (~0.5 s), only a run that logs to W&B needs it

        c = measure(formulation, n=100_000)
        paper = c["paper_effective"] if c["paper_effective"] is not None else [None] * len(c["lambda"])
        table = wandb.Table(columns=["lambda", "density_lambda", "loss_weight", "effective", "paper_effective"],
                            data=[[float(x) if x is not None else None for x in row] for row in zip(
                                c["lambda"], c["density_lambda"], c["loss_weight"], c["effective"], paper)])
        title = f"{formulation.name}: effective weight over log-SNR (shift {formulation.shift:g})"
        self.log({"formulation/weighting": table,
                  "formulation/effective_weight": wandb.plot.line(table, "lambda", "effective", title=title)}, 0)

    def log_evaluation(self, rows: list[dict], grids: dict, info: dict) -> None:
        """The evaluation as a table (the results schema's columns), each setting's CLIP score and FID (history and
        summary, so a dashboard can plot one against the other per setting), each setting's sample grid with its
        prompts, and the evaluated checkpoint as an artifact reference (the file stays where it is)."""
        if self.run is None:
            return
        import wandb  # deferred: wandb (~0.5 s), only a run that logs to W&B needs it

        from rfsweep.results import FIT_ERROR, REAL, columns, setting_name  # deferred: pandas (~0.3 s), as wandb

        cols = [*columns(), *([FIT_ERROR] if any(FIT_ERROR in r for r in rows) else [])]
        values = {"eval/results": wandb.Table(columns=list(cols), data=[[r.get(c) for c in cols] for r in rows])}
        for r in rows:
            key = "eval/real" if r["weights"] == REAL else f"eval/{setting_name(r['weights'], r['steps'], r['cfg'])}"
            values.update({f"{key}/{m}": float(r[m]) for m in metric_names()})
        for name, (path, captions) in grids.items():
            values[f"samples/{name}"] = wandb.Image(str(path), caption=" | ".join(captions))
        self.log(values, info["step"])
        self.summary({k: v for k, v in values.items() if k.startswith("eval/") and k != "eval/results"})
        ckpt = Path(info["path"]).resolve()
        art = wandb.Artifact(f"checkpoint-{self.run.id}", type="model",
                             metadata={"step": info["step"], "val_loss_ema": info["val_loss"]})
        art.add_reference(ckpt.as_uri(), name=ckpt.name, checksum=False)  # a reference: nothing is uploaded
        if permits(self.run_dir):
            self.run.log_artifact(art, aliases=["evaluated", f"step-{info['step']}"])

    def finish(self, outcome: str, reason: str = "") -> None:
        """End the W&B run (once). A failure of W&B itself (its service gone, e.g. killed with the job by a requeue)
        is said in one line and never changes what the job did."""
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            if outcome == "lost":  # the run folder (and its W&B run) is another process's now: no outcome of ours
                run.finish(exit_code=0)
                return
            run.summary.update({"rfsweep/outcome": outcome, **({"rfsweep/reason": reason} if reason else {})})
            if outcome in ("preempted", "requeued", "cancelled"):
                run.mark_preempting()
                run.finish(exit_code=0)
                import wandb  # deferred: wandb (~0.5 s), only a run that logs to W&B needs it

                wandb.teardown()  # the job is handed back next: its service ends now, not killed by the requeue
            else:
                run.finish(exit_code=0 if outcome == "done" else 1)
        except Exception as e:
            print(f"warning: W&B could not finish run {run.id} ({type(e).__name__}: {e}); the job's outcome "
                  f"({outcome}) stands", file=sys.stderr, flush=True)


@contextmanager
def job_run(cfg: DictConfig, run_dir: Path, meta: RunMeta, job_type: str, params=None, depth=None):
    """`with job_run(...) as tracker:`; an exception finishes the run as failed with its reason (a lost lease: without
    an outcome, the run's new holder writes it: the run folder's write fence is asked), then propagates (a SystemExit
    too: submitit's requeue)."""
    tracker = JobRun(cfg, run_dir, meta, job_type, params, depth)
    try:
        yield tracker
    except SystemExit:
        tracker.finish("requeued")
        raise
    except BaseException as e:
        lost = isinstance(e, LeaseLost) or not permits(run_dir)  # the new holder records the outcome
        tracker.finish("lost" if lost else "failed", "" if lost else f"{type(e).__name__}: {e}".splitlines()[0][:500])
        raise
    finally:
        tracker.finish("done")  # a no-op when finished above or by the job
