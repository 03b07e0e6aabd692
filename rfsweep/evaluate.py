"""After training: a grid of samples, then the paper's evaluation (Sec. 5.1) written as `results.csv`.

Joins the trained module (sampling) to the evaluators and the results schema; each piece stays ignorant
of the others: `rfsweep.evaluation.run.evaluate` only sees a `sample_fn(weights, steps, cfg, captions, seed)`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rfsweep.data import build_dataset
from rfsweep.evaluation.run import EvaluationStopped  # noqa: F401 (re-exported)
from rfsweep.evaluation.run import sample_grid as save_grid
from rfsweep.results import RESULTS_FILE, write_results


def held_out_captions(cfg: DictConfig, n: int) -> list[str]:
    ds = build_dataset(cfg.data.name, "test", cfg.data.resolution, cfg.data.seed, cfg.data.path)
    return [ds[i]["caption"] for i in range(min(n, len(ds)))]


def sample_grid(cfg: DictConfig, module, run_dir: Path) -> Path:
    """`samples.png` (EMA weights, the sampler config) for the first held-out captions, and their text."""
    s = cfg.sampler
    captions = held_out_captions(cfg, s.n_grid)
    images = module.generate(captions, steps=s.steps, cfg=s.cfg, shift=s.shift, seed=cfg.eval.seed)
    (run_dir / "samples.txt").write_text("\n".join(captions) + "\n")
    return save_grid(images, run_dir / "samples.png", nrow=8)


def evaluate_run(cfg: DictConfig, module, run_dir: Path, info: dict, settings, stop=None) -> list[dict]:
    """Evaluate and write results.csv; `stop()` is asked after each setting (EvaluationStopped ends early)."""
    from rfsweep.evaluation.evaluators import build_evaluator
    from rfsweep.evaluation.reference import real_reference_row, reference_stats
    from rfsweep.evaluation.run import evaluate

    e, meta = cfg.eval, module.meta
    args = OmegaConf.to_container(e.evaluator_args, resolve=True) if e.get("evaluator_args") else {}
    evaluator = build_evaluator(e.evaluator, device=module.device, **args)
    ref = reference_stats(evaluator, cfg.data.name, "test", cfg.data.resolution, e.n_samples, cfg.data.seed,
                          cache_dir=Path(cfg.paths.cache), data_path=cfg.data.path)
    prompts = held_out_captions(cfg, e.n_samples)
    shift = cfg.sampler.shift

    def sample_fn(weights: str, steps: int, guidance: float, captions: list[str], seed: int) -> torch.Tensor:
        return module.generate(captions, steps=steps, cfg=guidance, shift=shift, seed=seed, weights=weights)

    rows = evaluate(sample_fn, evaluator, prompts, ref, settings=settings, weights=tuple(e.weights),
                    n_samples=e.n_samples, batch_size=e.batch_size, seed=e.seed, grid_dir=run_dir / "eval_samples",
                    stop=stop)
    common = {"variant": meta["variant"], "family": meta["family"], "dataset": meta["dataset"],
              "backbone": meta["backbone"], "ckpt_step": info["step"], "val_loss": info["val_loss"],
              "seed": meta["seed"], "run_dir": str(run_dir)}
    rows = [{**common, **r} for r in rows]
    real = real_reference_row(evaluator, ref, cfg.data.name, cfg.data.resolution, e.n_samples, cfg.data.seed,
                              data_path=cfg.data.path)
    rows.append({**common, **real, "variant": "real images", "family": "real", "ckpt_step": 0, "val_loss": None})
    write_results(run_dir / RESULTS_FILE, rows)
    _log_wandb(cfg, module, rows, run_dir)
    return rows


def _log_wandb(cfg: DictConfig, module, rows: list[dict], run_dir: Path) -> None:
    """Log metrics and the sample grid to the run's W&B run: the trainer's logger when training ran in this
    process, else (a rerun that only evaluates, e.g. after a pre-emption) the same run reopened by its stable id."""
    trainer = getattr(module, "_trainer", None)
    loggers = [lg for lg in (trainer.loggers if trainer is not None else []) if type(lg).__name__ == "WandbLogger"]
    own = None
    if not loggers and cfg.logger.wandb:
        from rfsweep.wandb_logger import make_wandb_logger

        own = make_wandb_logger(cfg, run_dir, module.meta)
        loggers = [own]
    for lg in loggers:
        import wandb

        for r in rows:
            key = f"eval/{r['weights']}_steps{r['steps']}_cfg{r['cfg']:g}"
            lg.experiment.log({f"{key}/clip_score": r["clip_score"], f"{key}/fid": r["fid"]})
        lg.experiment.log({"samples": wandb.Image(str(run_dir / "samples.png"))})
    if own is not None:
        own.experiment.finish()
