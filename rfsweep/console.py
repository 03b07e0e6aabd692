"""What a job prints: one line per event. Lightning's own log handler goes (its lines reach the root logger once,
formatted by Hydra), its "Tip" lines and library deprecation warnings that do not apply are dropped, and training
progress is one bar that counts steps (step / max_steps, speed, ETA) on a terminal, or a line every 30 s in a log
file (a SLURM job's), instead of Lightning's per-epoch bar ("Epoch 0/-2"): `rfsweep.train.callbacks.StepProgressBar`."""

from __future__ import annotations

import logging
import sys
import time
import warnings

NOISE = (  # warnings of libraries about themselves: nothing a user of rfsweep can act on
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def tidy_logging() -> None:
    """Idempotent: Lightning's loggers without their own handlers (so each line prints once), no tips."""
    root = logging.getLogger()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        if root.handlers:  # Hydra configured the root logger: let it print Lightning's lines, once
            logger.handlers.clear()
            logger.propagate = True
        for handler in [*logger.handlers, *root.handlers]:
            if not any(isinstance(f, _NoTips) for f in handler.filters):
                handler.addFilter(_NoTips())
    for message in NOISE:
        warnings.filterwarnings("ignore", message=message)
    try:  # transformers' per-load "Loading weights" bar: one per encoder, on every job
        from transformers.utils import logging as hf_logging  # deferred: transformers (~0.5 s), not needed by --help

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def interactive() -> bool:
    return sys.stdout.isatty()


def progress_line(step: int, total: int, rate: float | None, loss: float | None) -> str:
    """`step 1200/3200 (38%) 63.0 steps/s ETA 0:00:31 loss 0.4412` for log files."""
    eta = f" ETA {time.strftime('%H:%M:%S', time.gmtime((total - step) / rate))}" if rate else ""
    speed = f" {rate:.1f} steps/s" if rate else ""
    tail = f" loss {loss:.4f}" if loss is not None else ""
    return f"step {step}/{total} ({100 * step / max(total, 1):.0f}%){speed}{eta}{tail}"
