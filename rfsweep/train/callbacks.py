"""Callbacks for robustness on a cluster: periodic `last.ckpt`, a stop at the next step on a pre-emption signal,
progress for `python -m analysis status`, and a recorded failure when training breaks (e.g. a non-finite loss)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L

from rfsweep import runfolder
from rfsweep.cluster.signals import PreemptionGuard


def sharded(trainer) -> bool:
    """Training under FSDP (Lightning's ModelParallelStrategy): weights are DTensors, checkpoints folders."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(trainer.strategy, ModelParallelStrategy)


def full_state_dict(pl_module) -> dict:
    """The module's state dict with whole tensors on the CPU: gathered from the shards under FSDP (a collective:
    every rank calls it; rank 0 gets the tensors), as is otherwise."""
    from torch.distributed.tensor import DTensor

    state = pl_module.state_dict()
    if not any(isinstance(v, DTensor) for v in state.values()):
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(pl_module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def completed_step(trainer, batch_idx: int) -> bool:
    """True after the micro-batch that ends an optimizer step (every batch without gradient accumulation): EMA,
    checkpoints and stops happen at step boundaries only, so a resumed run repeats an uninterrupted one."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0


class EMAUpdate(L.Callback):
    """Updates the module's EMA after each optimizer step. It must come first among the callbacks, so that
    a checkpoint written at the same step already holds the updated EMA."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if completed_step(trainer, batch_idx):
            pl_module.update_ema()


class PeriodicCheckpoint(L.Callback):
    """Writes `<dir>/last.ckpt` every `every` training steps and when training ends."""

    def __init__(self, dirpath: str | Path, every: int):
        self.dirpath, self.every = Path(dirpath), every

    def save(self, trainer: L.Trainer) -> None:
        target = self.dirpath / runfolder.LAST
        if not sharded(trainer):
            trainer.save_checkpoint(target, weights_only=False)  # AtomicCheckpointIO: temp file, rename
            return
        import shutil

        partial = target.with_name(runfolder.LAST + ".partial")  # every rank writes its shards, then one swap
        if trainer.is_global_zero and partial.exists():
            shutil.rmtree(partial)
        trainer.strategy.barrier()
        trainer.save_checkpoint(partial, weights_only=False)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            runfolder.swap_in(partial, target)
        trainer.strategy.barrier()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if completed_step(trainer, batch_idx) and trainer.global_step % self.every == 0:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)


class BestWeights(L.Callback):
    """`best.safetensors`: the raw and EMA weights (no optimizer state) of the step with the lowest EMA validation
    loss (Sec. 5.1: the evaluated step), written atomically with its step and score as metadata. The best score so
    far travels in last.ckpt, so a resumed run keeps comparing against it."""

    def __init__(self, path: str | Path, monitor: str = "val/loss_ema"):
        self.path, self.monitor = Path(path), monitor
        self.best_score: float | None = None
        self.best_step: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking or not math.isfinite(float(value)):
            return
        if self.best_score is None or float(value) < self.best_score:
            self.best_score, self.best_step = float(value), trainer.global_step
            self.save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.best_score is None and not self.path.exists():  # never validated: the final weights are evaluated
            self.best_step = trainer.global_step
            self.save(trainer, pl_module)

    def save(self, trainer, pl_module) -> None:
        """Every rank calls it (gathering FSDP's shards is collective); rank 0 writes."""
        from safetensors.torch import save

        from rfsweep.atomic import atomic_write

        tensors = full_state_dict(pl_module)
        if not trainer.is_global_zero:
            return
        meta = {"step": str(self.best_step), self.monitor: repr(self.best_score)}
        with atomic_write(self.path) as f:
            f.write(save(tensors, metadata=meta))

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_step = state.get("best_score"), state.get("best_step")


class Preemption(L.Callback):
    """On a stop signal noted by the job's `PreemptionGuard`: finish the current step, write `last.ckpt`, stop."""

    def __init__(self, checkpoint: PeriodicCheckpoint, guard: PreemptionGuard):
        self.checkpoint, self.guard = checkpoint, guard

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning installed its own handlers when `fit` began (they would stop without a checkpoint, or requeue a
        # second time): the guard's come back on top; Lightning restores the guard's at the end of `fit`
        self.guard.install()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not completed_step(trainer, batch_idx):
            return
        stop = self.guard.stop_requested()
        if trainer.world_size > 1:  # a signal to any rank stops all at the same step (the save is collective)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop and not self.guard.received:
                self.guard.received = "peer"
        if stop:
            self.checkpoint.save(trainer)
            trainer.should_stop = True


class Progress(L.Callback):
    """Keeps `status.json` (state running) current: step, max_steps, steps/s and samples/s, at most every
    `every_s` seconds, so `python -m analysis status` shows progress and an ETA; with `echo`, also prints a progress
    line (a job writing to a log file has no progress bar)."""

    def __init__(self, run_dir: str | Path, max_steps: int, batch_size: int, every_s: float = 30.0,
                 echo: bool = False):
        self.run_dir, self.max_steps, self.batch_size, self.every_s = run_dir, int(max_steps), batch_size, every_s
        self.echo = echo
        self._mark: tuple[float, int] | None = None
        self._last_write = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now, step = time.time(), trainer.global_step
        if self._mark is None:
            self._mark, self._last_write = (now, step), now
            return
        if now - self._last_write >= self.every_s and trainer.is_global_zero:
            self._report(trainer, now, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._mark is not None and trainer.is_global_zero and self.echo:
            self._report(trainer, time.time(), trainer.global_step, write=False)

    def _report(self, trainer, now: float, step: int, write: bool = True) -> None:
        t0, s0 = self._mark
        rate = (step - s0) / max(now - t0, 1e-9)
        if write:
            runfolder.write_status(self.run_dir, "running", step=step, max_steps=self.max_steps,
                                   steps_per_s=round(rate, 4), samples_per_s=round(rate * self.batch_size, 2))
        if self.echo:
            from rfsweep.console import progress_line

            loss = trainer.callback_metrics.get("train/loss")
            print(progress_line(step, self.max_steps, rate, None if loss is None else float(loss)), flush=True)
        self._last_write = now


class Throughput(L.Callback):
    """Logs `perf/samples_per_s` (global batch) every `every` steps and, on a GPU whose peak is known, `perf/mfu`
    from the backbone's training FLOPs per sample (`rfsweep.backbones.flops`)."""

    def __init__(self, batch_size: int, flops_per_sample: float | None, every: int = 50):
        self.batch_size, self.flops, self.every = batch_size, flops_per_sample, every
        self._mark: tuple[float, int] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now, step = time.time(), trainer.global_step
        if self._mark is None or step - self._mark[1] >= self.every:
            if self._mark is not None:
                rate = (step - self._mark[1]) * self.batch_size / max(now - self._mark[0], 1e-9)
                values = {"perf/samples_per_s": rate}
                peak = self._peak(pl_module)
                if peak and self.flops:
                    values["perf/mfu"] = rate * self.flops / (peak * trainer.world_size)
                if trainer.is_global_zero:
                    for logger in trainer.loggers:
                        logger.log_metrics(values, step=step)
            self._mark = (now, step)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.time()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._mark is not None:  # validation time is not training throughput
            self._mark = (self._mark[0] + time.time() - self._val_start, self._mark[1])

    @staticmethod
    def _peak(pl_module) -> float | None:
        import torch

        from rfsweep.backbones.flops import peak_flops

        dev = pl_module.device
        return peak_flops(torch.cuda.get_device_name(dev)) if dev.type == "cuda" else None


class BestValidation(L.Callback):
    """The run's lowest EMA validation loss and the step it was reached at, in the W&B run's summary."""

    def __init__(self, tracker):
        self.tracker, self.best = tracker, float("inf")

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get("val/loss_ema")
        if value is not None and float(value) < self.best and trainer.is_global_zero:
            self.best = float(value)
            self.tracker.summary({"best/val_loss_ema": self.best, "best/step": trainer.global_step})


class FailureRecorder(L.Callback):
    """Records why training broke in `status.json` (the exception still propagates)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = run_dir

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not trainer.is_global_zero:
            return
        runfolder.write_status(self.run_dir, "failed", step=trainer.global_step,
                               reason=f"{type(exception).__name__}: {exception}")
