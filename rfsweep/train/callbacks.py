"""Callbacks for robustness on a cluster: periodic step-numbered checkpoints, a stop at the next step on a
pre-emption signal, progress for `python -m analysis status`, and a recorded failure when training breaks (e.g. a
non-finite loss); the EMA updates, the best weights, throughput and the step progress bar. `STEP_ORDER` (at the
end) is the order they run in at every step, each with why it sits there."""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

from rfsweep import runfolder
from rfsweep.atomic import atomic_save_tensors, fsync_dir, fsync_tree
from rfsweep.backbones.flops import peak_flops
from rfsweep.cluster.signals import PreemptionGuard, signal_name
from rfsweep.console import progress_line
from rfsweep.fence import LeaseLost, check_write, current, permits
from rfsweep.train.posthoc_ema import snapshot_step_of, write_snapshot


def sharded(trainer) -> bool:
    """Training under FSDP (Lightning's ModelParallelStrategy): weights are DTensors, checkpoints folders."""
    return isinstance(trainer.strategy, ModelParallelStrategy)


def full_state_dict(pl_module, skip: str | None = None) -> dict:
    """The module's state dict with whole tensors on the CPU, without the keys that start with `skip` (neither
    gathered nor copied). Under FSDP a collective: every rank calls it and gathers the shards one tensor at a time,
    in the state dict's order (the same on every rank); rank 0 keeps each whole tensor on the CPU, the others get an
    empty dict, and no rank holds more than one whole tensor on its device. Otherwise (one process, DDP) the
    tensors, copied to the CPU."""
    state = {k: v for k, v in pl_module.state_dict().items() if not (skip and k.startswith(skip))}
    if not any(isinstance(v, DTensor) for v in state.values()):
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}
    keep = torch.distributed.get_rank() == 0
    out = {}
    for k, v in state.items():
        whole = v.full_tensor() if isinstance(v, DTensor) else v  # all-gather of the shards, on their device
        if keep:
            out[k] = whole.detach().cpu().contiguous()
        del whole
    return out


def completed_step(trainer, batch_idx: int) -> bool:
    """True after the micro-batch that ends an optimizer step (every batch without gradient accumulation): EMA,
    checkpoints and stops happen at step boundaries only, so a resumed run repeats an uninterrupted one."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0


def validation_due(trainer) -> bool:
    """Whether Lightning validates after the current batch: `val_check_interval` counts batches (`fit` sets it to
    trainer.val_every x accumulate_grad_batches), from the start of the run (`check_val_every_n_epoch=None`)."""
    every = trainer.val_check_batch
    if not trainer.enable_validation or not isinstance(every, int) or every <= 0:
        return False
    return (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % every == 0


class EMAUpdate(L.Callback):
    """Updates the module's EMA after each optimizer step. It must come first among the callbacks, so that
    a checkpoint written at the same step already holds the updated EMA."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if completed_step(trainer, batch_idx):
            pl_module.update_ema()


class PostHocSnapshots(L.Callback):
    """Snapshots of the post-hoc EMAs (`rfsweep.train.posthoc_ema`) every `every` optimizer steps, at the last step,
    and at the evaluated step (`at_best`: the step of the best weights, which the lengths are rebuilt at: the
    mathematics needs a snapshot there, not a dense cadence; the previous best's extra snapshot is removed once
    superseded), after their update (it comes after EMAUpdate): rank 0 under DDP, every rank its shards under FSDP.
    A step written before a pre-emption is written again, identically, by the resumed run (which also replays the
    validations that chose the best step)."""

    def __init__(self, folder: str | Path, every: int, dtype: str = "float32"):
        self.folder, self.every, self.dtype = Path(folder), int(every), getattr(torch, dtype)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if completed_step(trainer, batch_idx) and self.scheduled(step, trainer.max_steps):
            self.write(trainer, pl_module)

    def scheduled(self, step: int, max_steps: int) -> bool:
        return step % self.every == 0 or step == max_steps

    def write(self, trainer, pl_module) -> None:
        step = trainer.global_step
        emas = dict(zip(pl_module.sigma_rels, pl_module.phema))
        if sharded(trainer):
            write_snapshot(self.folder, step, emas, trainer.global_rank, trainer.world_size, dtype=self.dtype)
        elif trainer.is_global_zero:
            write_snapshot(self.folder, step, emas, dtype=self.dtype)

    def at_best(self, trainer, pl_module) -> None:
        """The best weights move to this step (every rank calls it, as BestWeights.save, before best.safetensors is
        written: the evaluated step never lacks its snapshot): a snapshot here unless the cadence wrote one."""
        if not self.scheduled(trainer.global_step, trainer.max_steps):
            self.write(trainer, pl_module)

    def after_best(self, trainer) -> None:
        """best.safetensors now names this step: the extra snapshots of earlier best steps go (rank 0; every set of
        files of such a step, whatever world size wrote it)."""
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        for f in sorted(self.folder.glob("step*.safetensors")):
            old = snapshot_step_of(f)
            if old is not None and old < step and not self.scheduled(old, trainer.max_steps):
                check_write(f)
                f.unlink(missing_ok=True)


class PeriodicCheckpoint(L.Callback):
    """Writes `<run>/checkpoints/step-<NNNNNNNN>.ckpt` every `every` optimizer steps, at a stop (`request`) and when
    training ends, and keeps the newest `keep` (`runfolder.checkpoint_path`, `runfolder.prune_checkpoints`).

    A checkpoint holds the whole state of its step: at a step with a validation it is written after the validation
    (and after `BestWeights`, which must come before this callback), so a run resumed from it repeats the
    validations, the best weights and the evaluated step of an uninterrupted run (Lightning then resumes after the
    validation, as from its own ModelCheckpoint). A step is written once."""

    def __init__(self, run_dir: str | Path, every: int, keep: int = 2):
        self.run_dir, self.every, self.keep = Path(run_dir), every, int(keep)
        self.saved_step: int | None = None
        self._after_validation = False  # a save waits for this step's validation
        self._then_stop = False

    def save(self, trainer: L.Trainer) -> None:
        """The step's checkpoint, written whole and synced (file and folder entry) before older ones are pruned, as
        torchtitan orders it: a kill at any moment leaves the previous complete checkpoint. Under FSDP every rank
        writes its shards into `<name>.partial` (DCP syncs each shard), rank 0 syncs the folder and renames it."""
        target = runfolder.checkpoint_path(self.run_dir, trainer.global_step)
        self.saved_step, zero = trainer.global_step, trainer.is_global_zero
        if zero:  # each removal and rename asks the write fence first: a lost folder's checkpoints are another's
            check_write(target)
            runfolder.remove_checkpoint_leftovers(self.run_dir)  # a killed writer's .partial folder or temp file
        if sharded(trainer):
            partial = target.with_name(target.name + runfolder.PARTIAL)
            trainer.strategy.barrier()
            trainer.save_checkpoint(partial, weights_only=False)  # ends with a barrier: every shard is written
            if zero:
                fsync_tree(partial)
                check_write(target)
                if target.exists():  # this step's earlier copy: one a resume skipped as damaged
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                os.replace(partial, target)
        else:
            trainer.save_checkpoint(target, weights_only=False)  # AtomicCheckpointIO: temp file, fsync, rename
        if zero:
            fsync_dir(target.parent)
            check_write(target)
            runfolder.prune_checkpoints(self.run_dir, target, self.keep)
        trainer.strategy.barrier()

    def request(self, trainer: L.Trainer, then_stop: bool = False) -> None:
        """Write this step (now, or after its validation when one is due); `then_stop`: training ends there, with
        no validation Lightning would add for the stop."""
        self._then_stop = self._then_stop or then_stop
        if self.saved_step == trainer.global_step:
            self._finish(trainer)
        elif validation_due(trainer):
            self._after_validation = True
        else:
            self.save(trainer)
            self._finish(trainer)

    def _finish(self, trainer: L.Trainer) -> None:
        if self._then_stop:
            trainer.should_stop = True
            trainer.limit_val_batches = 0  # Lightning validates on should_stop: a step the schedule never asked for

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if completed_step(trainer, batch_idx) and trainer.global_step % self.every == 0:
            self.request(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._after_validation and not trainer.sanity_checking:
            self._after_validation = False
            self.save(trainer)
            self._finish(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.saved_step != trainer.global_step:
            self.save(trainer)


POSTHOC_PREFIX = "phema."  # the post-hoc EMAs' keys in the module's state dict


class BestWeights(L.Callback):
    """`best.safetensors`: the raw and EMA weights (no optimizer state) of the step with the lowest EMA validation
    loss (Sec. 5.1: the evaluated step), written atomically with its step and score as metadata. The best score so
    far travels in the checkpoint, so a resumed run keeps comparing against it."""

    def __init__(self, path: str | Path, monitor: str = "val/loss_ema", posthoc: PostHocSnapshots | None = None):
        self.path, self.monitor, self.posthoc = Path(path), monitor, posthoc  # the post-hoc EMAs' snapshots, if any
        self.best_score: float | None = None
        self.best_step: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking or not math.isfinite(float(value)):
            return
        if self.best_score is None or float(value) < self.best_score:
            self.best_score, self.best_step = float(value), trainer.global_step
            if self.posthoc is not None:  # the post-hoc EMAs' snapshot at the evaluated step, written first
                self.posthoc.at_best(trainer, pl_module)
            self.save(trainer, pl_module)
            if self.posthoc is not None:  # then the superseded best steps' snapshots go
                self.posthoc.after_best(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        finished = trainer.global_step >= (trainer.max_steps or 0)  # not at a stop: the run goes on after a requeue
        if not finished or self.best_score is not None:
            return
        # never validated: the final weights, unless written already. Rank 0 looks, every rank follows (under FSDP
        # the save is a collective: ranks that looked on their own could disagree on a file system in flux)
        if not trainer.strategy.broadcast(self.path.exists() if trainer.is_global_zero else None, src=0):
            self.best_step = trainer.global_step
            self.save(trainer, pl_module)

    def save(self, trainer, pl_module) -> None:
        """Every rank calls it (gathering FSDP's shards is collective); rank 0 gathers and writes, tensor by tensor
        (`rfsweep.atomic.atomic_save_tensors`: no second copy of the weights in memory)."""
        if not sharded(trainer) and not trainer.is_global_zero:
            return  # DDP: every rank holds the same weights; only the writer copies them to the CPU
        # the post-hoc EMAs stay out, never gathered: evaluation rebuilds their lengths from the snapshots
        # (rfsweep.train.posthoc_ema)
        tensors = full_state_dict(pl_module, skip=POSTHOC_PREFIX)
        if not trainer.is_global_zero:
            return  # taken over during the validation: not written; the ranks' next lease check ends training
        meta = {"step": str(self.best_step), self.monitor: repr(self.best_score)}
        atomic_save_tensors(tensors, self.path, metadata=meta)

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_step = state.get("best_score"), state.get("best_step")


class RunCSVLogger(L.pytorch.loggers.CSVLogger):
    """Lightning's CSV logger (`<run>/metrics.csv`) that asks the run folder's write fence before each write (its
    periodic flush and the one when training ends, a failure's too): rows of a process whose run folder was taken
    over are dropped."""

    def save(self) -> None:
        if not permits(self.log_dir):
            if self._experiment is not None:
                self._experiment.metrics = []
            return
        super().save()


LOST = 255  # a lost run folder among the ranks' stop codes (signal numbers are smaller)


class StepAgreement(L.Callback):
    """First at each step's end, one collective: every rank's stop code (a pre-emption signal any rank caught) and,
    at a step that writes to the run folder (a checkpoint every `ckpt_every`, a post-hoc snapshot, a rung, a
    validation that may write the best weights, the last step) or that rank 0 itself stops at, rank 0's fresh read
    of the lease (`rfsweep.fence`: the heartbeat notices a takeover only at its next beat). All ranks learn the same
    answer at the same step: a folder another process took over ends training at once on every rank (LeaseLost);
    a stop is noted (`stop`: the signal's name) and `Preemption` acts on it after the step's checkpoint is due."""

    def __init__(self, guard: PreemptionGuard, write_every: list[int]):
        self.guard, self.every = guard, [int(e) for e in write_every if e]
        self.stop: str | None = None

    def writes_at(self, trainer) -> bool:
        step = trainer.global_step
        return any(step % e == 0 for e in self.every) or validation_due(trainer) or step >= (trainer.max_steps or 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not completed_step(trainer, batch_idx):
            return
        code = self.guard.code()
        fence = current(trainer.default_root_dir)
        if trainer.is_global_zero and fence is not None and (code or self.writes_at(trainer)) and not fence.holds():
            code = LOST
        if trainer.world_size > 1:  # every rank's code; a lost folder first, then the first rank's signal
            codes = trainer.strategy.all_gather(torch.tensor([code], device=pl_module.device)).flatten().tolist()
            code = LOST if LOST in codes else next((int(c) for c in codes if c), 0)
        if code == LOST:
            reason = (fence.lost if fence is not None and fence.lost else None) or "rank 0's lease was taken over"
            if fence is not None:
                fence.lose(reason)
            raise LeaseLost(reason)
        if code and self.stop is None:
            self.stop = signal_name(code)
            self.guard.note(self.stop)  # a rank the signal did not reach hands the job back as the one it reached


class Preemption(L.Callback):
    """On a stop the ranks agreed on (`StepAgreement`: a signal to any rank): the step ends, its checkpoint is
    written (after the step's validation when one is due, `PeriodicCheckpoint.request`) and training stops, on every
    rank at the same step."""

    def __init__(self, checkpoint: PeriodicCheckpoint, agreement: StepAgreement):
        self.checkpoint, self.agreement = checkpoint, agreement
        self.stopping = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.agreement.guard.install()  # the guard's handlers on top (`fit` keeps Lightning's from being installed)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stopping or not completed_step(trainer, batch_idx) or self.agreement.stop is None:
            return
        self.stopping = True
        self.checkpoint.request(trainer, then_stop=True)


class RungStop(L.Callback):
    """A race's rung (`rung.stop_at`): at that step the checkpoint is written (after the step's validation when one
    is due) and training stops, as a pre-emption stops it; the next launch resumes from there as from a pre-emption,
    so a run paused at rungs ends with the weights of one trained straight through (the step's lease read is the
    agreement's: a rung is a writing step)."""

    def __init__(self, checkpoint: PeriodicCheckpoint, stop_at: int):
        self.checkpoint, self.stop_at = checkpoint, int(stop_at)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if completed_step(trainer, batch_idx) and trainer.global_step == self.stop_at:
            self.checkpoint.request(trainer, then_stop=True)


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

    def rate(self, step: int) -> float | None:
        """Steps per second of this launch, from its first step to `step` (validations included)."""
        if self._mark is None or step <= self._mark[1]:
            return None
        return (step - self._mark[1]) / max(time.time() - self._mark[0], 1e-9)

    def _report(self, trainer, now: float, step: int, write: bool = True) -> None:
        t0, s0 = self._mark
        rate = (step - s0) / max(now - t0, 1e-9)
        if write and permits(self.run_dir):
            runfolder.write_status(self.run_dir, "running", step=step, max_steps=self.max_steps,
                                   steps_per_s=round(rate, 4), samples_per_s=round(rate * self.batch_size, 2))
        if self.echo:
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
    """Records why training broke in `status.json` (the exception still propagates), where the folder is still this
    process's (the write fence)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = run_dir

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not trainer.is_global_zero or isinstance(exception, LeaseLost) or not permits(self.run_dir):
            return  # a lost folder is not written
        runfolder.write_status(self.run_dir, "failed", step=trainer.global_step,
                               reason=f"{type(exception).__name__}: {exception}")


class StepProgressBar(TQDMProgressBar):
    """Training progress in steps of the whole run: `train: 37%| 1200/3200 [00:19<00:31, 63.0it/s, loss=0.44]`,
    also after a resume (the bar starts at the resumed step)."""

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        bar.total, bar.initial = trainer.max_steps, trainer.global_step
        bar.n = trainer.global_step
        bar.set_description("train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n, bar = trainer.global_step, self.train_progress_bar
        if bar is not None and self._should_update(n, bar.total):
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()


# The per-step order of a training run's callbacks: Lightning calls them in the order of the Trainer's list at every
# hook (the end of each batch, the end of each validation, the end of training), so where one sits decides what the
# others see of its step. `rfsweep.run.fit` passes its callbacks through `in_step_order`; tests/test_train.py pins the
# names. A new callback takes its place here, with its reason.
STEP_ORDER: tuple[tuple[str, str], ...] = (
    ("StepAgreement", "first: the ranks' one collective of the step: a stop signal on any rank, and rank 0's lease "
                      "read at a step that writes to the run folder, before anything writes"),
    ("EMAUpdate", "before anything saves the step: a checkpoint or snapshot of this step holds its updated EMAs"),
    ("PostHocSnapshots", "after EMAUpdate: the snapshot holds the post-hoc EMAs of its step (ema.sigma_rels only)"),
    ("BestWeights", "before PeriodicCheckpoint: after a validation the best weights and score are chosen before the "
                    "step's checkpoint (which carries the best score) is written"),
    ("BestValidation", "beside BestWeights: the lowest EMA validation loss in the W&B summary (a run with W&B only)"),
    ("PeriodicCheckpoint", "after the EMAs and the best weights: the checkpoint holds the whole state of its step"),
    ("Preemption", "after PeriodicCheckpoint: a stop asks it for this step's checkpoint (a step is written once), then "
                   "ends training"),
    ("RungStop", "after PeriodicCheckpoint: a race's rung asks it for this step's checkpoint, then ends training"),
    ("FailureRecorder", "writes only when training breaks (on_exception)"),
    ("Progress", "after the step's checkpoint: status.json's progress (steps/s, ETA)"),
    ("Throughput", "samples/s and MFU to the loggers"),
    ("StepProgressBar", "on a terminal only: the progress bar"),
    ("LearningRateMonitor", "with a logger only: Lightning's learning-rate log"),
)


def in_step_order(callbacks) -> list:
    """`callbacks` (None for one this run leaves out) in STEP_ORDER; a callback the table does not name is refused."""
    place = {name: i for i, (name, _) in enumerate(STEP_ORDER)}
    present = [c for c in callbacks if c is not None]
    unplaced = [type(c).__name__ for c in present if type(c).__name__ not in place]
    if unplaced:
        raise ValueError(f"callbacks {unplaced} have no place in rfsweep.train.callbacks.STEP_ORDER")
    return sorted(present, key=lambda c: place[type(c).__name__])
