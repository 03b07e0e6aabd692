"""Fitting one run with Lightning (resuming from the checkpoint rank 0 chose): the Trainer, its loggers, strategy and
plugins, and the run's callbacks in their per-step order (`rfsweep.train.callbacks.STEP_ORDER`). Reading the weights
back is `rfsweep.train.checkpoint_io`'s (`load_weights`)."""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from omegaconf import DictConfig

from rfsweep import runfolder
from rfsweep.atomic import atomic_write
from rfsweep.backbones.flops import parameter_count, train_flops_per_sample
from rfsweep.cluster.ranks import process_rank
from rfsweep.cluster.signals import PreemptionGuard
from rfsweep.console import interactive, tidy_logging
from rfsweep.fence import permits
from rfsweep.run.memory import memory_plan
from rfsweep.train.callbacks import (
    BestValidation,
    BestWeights,
    EMAUpdate,
    FailureRecorder,
    PeriodicCheckpoint,
    PostHocSnapshots,
    Preemption,
    Progress,
    RunCSVLogger,
    RungStop,
    StepAgreement,
    StepProgressBar,
    Throughput,
    in_step_order,
)
from rfsweep.train.checkpoint_io import AtomicCheckpointIO, checkpoint_step, resume_checkpoint
from rfsweep.train.posthoc_ema import FOLDER as POSTHOC_FOLDER

# Lightning warnings that do not apply to rfsweep's runs, silenced during `fit`: the stream resumes exactly (its
# position is the global step, which Lightning restores); the modules in eval mode are the EMA copy (test
# `test_only_frozen_modules_are_in_eval_mode_while_training`); the run folder holds the run's other files, and an
# earlier metrics.csv has been kept as metrics-part<k>.csv (`runfolder.keep_previous_metrics`).
LIGHTNING_FALSE_ALARMS = (
    "You're resuming from a checkpoint that ended before the epoch",
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"Experiment logs directory .* exists and is not empty",
)


def loggers(cfg: DictConfig, run_dir: Path, tracker=None) -> list:
    """CSV metrics in the run folder and the job's W&B run (`rfsweep.run.tracking.JobRun`), as configured (the CSV
    file asks the run folder's write fence: a folder another process took over gets no rows)."""
    out = []
    if cfg.logger.csv:
        if process_rank() == 0 and permits(run_dir):
            runfolder.keep_previous_metrics(run_dir)
        out.append(RunCSVLogger(str(run_dir), name="", version=""))
    wandb_logger = tracker.lightning_logger() if tracker is not None else None
    if wandb_logger is not None:
        out.append(wandb_logger)
    return out


def write_model_info(module, run_dir: Path, batch_size: int) -> None:
    """`model.json`: what the compute axis of the scaling study needs (parameters, training FLOPs per sample,
    global batch), written before training."""
    net = module.net
    info = {"backbone": module.meta.backbone, "depth": len(getattr(net, "blocks", [])) or None,
            "params": parameter_count(net), "batch_size": int(batch_size),
            "train_flops_per_sample": train_flops_per_sample(net, module.meta.latent_shape,
                                                             module.conditioner.context_len)}
    with atomic_write(run_dir / runfolder.MODEL_INFO, "w") as f:
        json.dump(info, f, indent=1)


def record_peak_memory(cfg: DictConfig, run_dir: Path) -> None:
    """model.json gets the GPU's peak allocated bytes of this launch next to the memory plan's estimate (the GPU
    check compares them)."""
    if not torch.cuda.is_available():
        return
    path = run_dir / runfolder.MODEL_INFO
    info = json.loads(path.read_text()) if path.is_file() else {}
    plan = memory_plan(cfg)
    info.update(peak_gpu_bytes=int(torch.cuda.max_memory_allocated()), planned_gpu_bytes=int(plan.total),
                planned=plan.describe())
    with atomic_write(path, "w") as f:
        json.dump(info, f, indent=1)


def fit(cfg: DictConfig, module, data, run_dir: Path, guard: PreemptionGuard, tracker=None,
        resume: Path | None | str = "latest") -> int:
    """Fit, resuming from the checkpoint `resume` (a job's rank 0 chose it, `checkpoint_io.resume_checkpoint`, and
    every rank was told: the ranks never choose on their own; "latest": this process reads it, for one process
    only); returns the global step reached. Training stops early, with
    a checkpoint written, when `guard` got a stop signal, or at a race's rung (`rung.stop_at`: status paused). With
    several devices every rank runs this; only rank 0 writes the run's files (and every rank its FSDP shards)."""
    if resume == "latest":
        resume = resume_checkpoint(run_dir)[0]
    tr, ckpt_dir = cfg.trainer, runfolder.checkpoint_dir(run_dir)
    stop_at = cfg.rung.stop_at if cfg.rung.stop_at is not None and cfg.rung.stop_at < tr.max_steps else None
    periodic = PeriodicCheckpoint(run_dir, tr.ckpt_every, tr.keep_checkpoints)
    posthoc = PostHocSnapshots(ckpt_dir / POSTHOC_FOLDER, cfg.ema.snapshot_every, cfg.ema.snapshot_dtype or "float32") \
        if cfg.ema.sigma_rels else None
    best = BestWeights(ckpt_dir / runfolder.BEST, posthoc=posthoc)
    if tr.compile:
        module.net.compile()
    tidy_logging()
    log_every = max(1, min(50, tr.val_every, tr.max_steps))
    flops = train_flops_per_sample(module.net, module.meta.latent_shape, module.conditioner.context_len)
    logs, bar = loggers(cfg, run_dir, tracker), interactive()
    progress = Progress(run_dir, tr.max_steps, tr.batch_size, echo=not bar)
    agreement = StepAgreement(guard, [tr.ckpt_every, *([cfg.ema.snapshot_every] if cfg.ema.sigma_rels else []),
                                      *([stop_at] if stop_at else [])])
    callbacks = in_step_order([  # STEP_ORDER says why each sits where it does; None: not in this run
        agreement,
        EMAUpdate(),
        posthoc,
        best,
        BestValidation(tracker) if tracker is not None and tracker.run is not None else None,
        periodic,
        Preemption(periodic, agreement),
        RungStop(periodic, stop_at) if stop_at else None,
        FailureRecorder(run_dir),
        progress,
        Throughput(tr.batch_size, flops, log_every),
        StepProgressBar() if bar else None,
        LearningRateMonitor(logging_interval="step") if logs else None,
    ])
    with _quiet():
        trainer = L.Trainer(
            accelerator=tr.accelerator, devices=tr.devices, precision=tr.precision, max_steps=tr.max_steps,
            # Lightning counts val_check_interval in micro-batches: validation every val_every optimizer steps
            val_check_interval=tr.val_every * tr.accumulate_grad_batches, check_val_every_n_epoch=None,
            gradient_clip_val=tr.grad_clip,
            callbacks=callbacks, logger=logs or False, plugins=_plugins(tr.strategy), enable_progress_bar=bar,
            strategy=_strategy(tr, cfg.cluster.collective_timeout_s), num_nodes=tr.num_nodes,
            accumulate_grad_batches=tr.accumulate_grad_batches,
            default_root_dir=str(run_dir), deterministic=tr.deterministic,
            enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=log_every,
            enable_checkpointing=False,  # rfsweep's own: step checkpoints (PeriodicCheckpoint), best.safetensors
            use_distributed_sampler=False,  # the data module shards the training stream itself, by rank
        )
    # Lightning's own SIGTERM handler (installed right before training, live until on_train_start) would broadcast
    # inside the handler and end the run with SIGTERMException: the job's guard notes every signal instead
    trainer._signal_connector.register_signal_handlers = guard.install
    if process_rank() == 0:
        runfolder.write_status(run_dir, "running", step=checkpoint_step(resume) if resume else 0,
                               max_steps=int(tr.max_steps))
        write_model_info(module, run_dir, tr.batch_size)
    with _quiet():
        trainer.fit(module, data, ckpt_path=str(resume) if resume else None)
    _end_process_group()  # rank 0 evaluates alone (hours): the other ranks leave now, no group waits on them
    if trainer.is_global_zero and tr.accelerator == "gpu":
        record_peak_memory(cfg, run_dir)
    if not guard.stop_requested() and trainer.is_global_zero and stop_at and trainer.global_step == stop_at:
        runfolder.write_status(run_dir, runfolder.PAUSED, step=trainer.global_step, max_steps=int(tr.max_steps))
    elif not guard.stop_requested() and trainer.is_global_zero:
        rate = progress.rate(trainer.global_step)
        runfolder.write_status(run_dir, "trained", step=trainer.global_step, max_steps=int(tr.max_steps),
                               best_val_loss_ema=best.best_score,
                               **({"steps_per_s": round(rate, 4)} if rate is not None else {}))
    return trainer.global_step


def _end_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def _quiet():
    """Lightning's warnings that do not apply (LIGHTNING_FALSE_ALARMS) silenced; with one task per job, also its
    advice to start the job with `srun` (it matters only for several tasks, which SLURM starts with srun)."""
    with warnings.catch_warnings():
        for message in LIGHTNING_FALSE_ALARMS:
            warnings.filterwarnings("ignore", message=message)
        if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
            warnings.filterwarnings("ignore", message="The `srun` command is available on your system")
        yield


def _strategy(tr: DictConfig, timeout_s: float = 600.0):
    """ddp: replicas (one process or DDP over devices x nodes); fsdp: FSDP2 (`fully_shard`) through Lightning's
    ModelParallelStrategy, data-parallel only, sharded checkpoints (a folder per step). FSDP runs on CPUs too (gloo),
    where the tests check it. A collective that waits longer than `timeout_s` (cluster.collective_timeout_s: longer
    than the slowest gap between two collectives, a checkpoint write) ends the process group (Lightning's default,
    30 minutes, would hold every GPU that long); a dead rank is noticed sooner by the ranks' watchdog."""
    timeout = timedelta(seconds=float(timeout_s))
    if tr.strategy == "fsdp":
        return ModelParallelStrategy(data_parallel_size=tr.devices * tr.num_nodes, tensor_parallel_size=1,
                                     save_distributed_checkpoint=True, timeout=timeout)
    return DDPStrategy(timeout=timeout) if tr.devices * tr.num_nodes > 1 else "auto"


def _plugins(strategy: str = "ddp") -> list:
    """Atomic checkpoints (for files; FSDP's sharded folders are swapped in whole, `PeriodicCheckpoint`); under SLURM,
    Lightning's environment without its own auto-requeue (rfsweep's guard requeues exactly once)."""
    plugins = [] if strategy == "fsdp" else [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins
