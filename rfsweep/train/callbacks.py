"""Callbacks for robustness on a cluster: periodic `last.ckpt`, pre-emption by SIGTERM / SIGUSR1 (SLURM
sends one before killing a job), and a recorded failure when training breaks (e.g. a non-finite loss)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import lightning as L

from rfsweep.atomic import atomic_write

LAST, BEST = "last.ckpt", "best.ckpt"


def write_status(run_dir: str | Path, state: str, **extra) -> None:
    """Atomically record the run's state ("running", "trained", "preempted", "failed", "done")."""
    with atomic_write(Path(run_dir) / "status.json", "w") as f:
        f.write(json.dumps({"state": state, "time": time.time(), **extra}, indent=1))


def read_status(run_dir: str | Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class EMAUpdate(L.Callback):
    """Updates the module's EMA after each training batch. It must come first among the callbacks, so that
    a checkpoint written at the same step already holds the updated EMA."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.update_ema()


class PeriodicCheckpoint(L.Callback):
    """Writes `<dir>/last.ckpt` every `every` training steps and when training ends."""

    def __init__(self, dirpath: str | Path, every: int):
        self.dirpath, self.every = Path(dirpath), every

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.dirpath / LAST, weights_only=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)


class Preemption(L.Callback):
    """On SIGTERM or SIGUSR1: finish the current step, write `last.ckpt`, stop training cleanly."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, checkpoint: PeriodicCheckpoint):
        self.checkpoint, self.received = checkpoint, None

    def on_train_start(self, trainer, pl_module) -> None:
        # replaces the handlers in place (Lightning's would stop without a checkpoint), restored at the end
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:  # a signal to any rank stops all at the same step (the save is collective)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            self.received = self.received or ("peer" if stop else None)
        if stop:
            self.checkpoint.save(trainer)
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        for s, handler in getattr(self, "previous", {}).items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


class FailureRecorder(L.Callback):
    """Records why training broke in `status.json` (the exception still propagates)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = run_dir

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not trainer.is_global_zero:
            return
        write_status(self.run_dir, "failed", step=trainer.global_step,
                     reason=f"{type(exception).__name__}: {exception}")
