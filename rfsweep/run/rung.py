"""A race's rung in one run (`rung.stop_at`, `hydra/sweeper=race`): the launch trains to the rung's step, pauses
there (status paused, its checkpoint written as at a pre-emption) and evaluates the weights it would evaluate at the
end (`checkpoint_io.evaluated_checkpoint`) with the rung's cheaper protocol (`rung.samples` per setting of
`rung.settings`, `rung.weights`) into rungs/<step>/ (results.csv and its evidence bank, read by
`rfsweep.run.race_control`). The next launch, with a later rung or none, continues from the checkpoint: the rung is not
part of the run's identity."""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import DictConfig, open_dict

from rfsweep import runfolder
from rfsweep.errors import ConfigError

RUNGS = runfolder.RUNGS


def active(cfg: DictConfig) -> bool:
    """This launch stops at a rung before the end of training."""
    return cfg.rung.stop_at is not None and int(cfg.rung.stop_at) < int(cfg.trainer.max_steps)


def folder(run_dir: str | Path, step: int) -> Path:
    """Where a rung's evaluation goes: <run>/rungs/<step>/."""
    return Path(run_dir) / RUNGS / str(int(step))


def eval_config(cfg: DictConfig) -> DictConfig:
    """The run's config with the rung's evaluation protocol in `eval` (no post-hoc EMA lengths at a rung)."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.eval.n_samples = int(cfg.rung.samples)
        out.eval.batch_size = min(int(cfg.eval.batch_size), int(cfg.rung.samples))
        out.eval.settings = [list(s) for s in cfg.rung.settings]
        out.eval.weights = list(cfg.rung.weights)
        out.eval.ema_lengths = []
    return out


def expected(cfg: DictConfig) -> list[tuple]:
    """(weights, steps, cfg) of a rung's evaluation."""
    return [(w, int(s), float(c)) for w in cfg.rung.weights for s, c in cfg.rung.settings]


def finished(cfg: DictConfig, evaluator: str) -> bool:
    """The rung's evaluation is complete (results and evidence for every setting, by this evaluator)."""
    from rfsweep.evaluation.bank import BANK_FILE, bank_complete  # deferred: torchmetrics
    from rfsweep.results import RESULTS_FILE, results_complete  # deferred: pandas

    where = folder(cfg.run_dir, cfg.rung.stop_at)
    return results_complete(where / RESULTS_FILE, expected(cfg), evaluator=evaluator) and \
        bank_complete(where / BANK_FILE, expected(cfg), evaluator)


def reached(run_dir: str | Path) -> int:
    """The step of the run's last complete checkpoint (0: none; CheckpointError: it has some and none reads)."""
    from rfsweep.train.checkpoint_io import resume_checkpoint  # deferred: torch

    return resume_checkpoint(run_dir)[1]


def check_reachable(cfg: DictConfig, status: dict) -> None:
    """A run trained beyond the rung cannot be evaluated there: refused in one line, nothing written."""
    step = max(reached(cfg.run_dir), int(status.get("step") or 0))
    if step > int(cfg.rung.stop_at) or runfolder.is_trained(status):
        raise ConfigError(f"config error: rung.stop_at={cfg.rung.stop_at} but {cfg.run_dir} is trained to step {step} "
                          f"(state {status.get('state')}; allowed: a later rung, or null: the run's end)")


def paused_here(cfg: DictConfig) -> bool:
    """Training has reached this rung (its checkpoint is the rung's step; paused, or stopped or failed while the rung
    was evaluated): the launch only evaluates."""
    return reached(cfg.run_dir) == int(cfg.rung.stop_at)
