"""One job: validate, train (or resume), sample a grid, evaluate, write results. `python -m rfsweep`."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rfsweep.config import ConfigError, validate
from rfsweep.formulations import build_formulation
from rfsweep.results import RESULTS_FILE, results_complete
from rfsweep.sweep import formulation_spec, variant_name
from rfsweep.train.callbacks import BEST, LAST, read_status, write_status

AE_KEYS = ("latent_channels", "downsample")  # config-only keys of the autoencoder group
BACKBONE_KEYS = ("label",)  # config-only keys of the backbone group
# Lightning warnings that do not apply to rfsweep's runs, silenced during `fit`: the stream resumes exactly (its
# position is the global step, which Lightning restores); the modules in eval mode are the EMA copy (test
# `test_only_frozen_modules_are_in_eval_mode_while_training`); the run folder holds the run's other files, and an
# earlier metrics.csv has been kept as metrics-part<k>.csv (`keep_previous_metrics`).
LIGHTNING_FALSE_ALARMS = (
    "You're resuming from a checkpoint that ended before the epoch",
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"Experiment logs directory .* exists and is not empty",
)


def _instantiate(node: DictConfig, config_only: tuple[str, ...]):
    """`instantiate` a group's node without the keys that only other config entries read."""
    values = OmegaConf.to_container(node, resolve=True)
    return instantiate({k: v for k, v in values.items() if k not in config_only})


def build_conditioner(cfg: DictConfig):
    from rfsweep.conditioning import Conditioner

    c = cfg.conditioning
    cond = Conditioner([instantiate(e) for e in c.encoders], drop_prob=c.drop_prob, cache=c.cache)
    for key in ("context_dim", "pooled_dim", "clip_tokens"):
        if getattr(cond, key) != c[key]:
            raise ConfigError(f"config error: conditioning.{key}={c[key]} but its encoders give {getattr(cond, key)} "
                              f"(allowed: {getattr(cond, key)})")
    return cond


def build_autoencoder(cfg: DictConfig):
    return _instantiate(cfg.autoencoder, AE_KEYS)


def build_module(cfg: DictConfig, formulation=None):
    """Everything a run needs, built from the config (encoders loaded, nothing trained)."""
    import lightning as L

    from rfsweep.data.module import DataModule

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tr = cfg.trainer
    data = DataModule(cfg.data.name, tr.batch_size, tr.max_steps, cfg.data.resolution, cfg.seed, cfg.data.path,
                      tr.n_val, tr.num_workers, cfg.data.seed)
    return build_model(cfg, formulation, warm=lambda conditioner: warm_captions(cfg, conditioner, data)), data


def build_model(cfg: DictConfig, formulation=None, warm=None):
    """The DiffusionModule of a config without its data (e.g. to sample from a finished run's checkpoint)."""
    from rfsweep.train.module import DiffusionModule

    formulation = formulation or build_formulation(formulation_spec(cfg.formulation))
    tr = cfg.trainer
    net = _instantiate(cfg.backbone, BACKBONE_KEYS)
    side = cfg.data.resolution // cfg.autoencoder.downsample
    meta = {"variant": formulation.name, "family": formulation.family, "dataset": cfg.data.label,
            "backbone": cfg.backbone.label, "seed": int(cfg.seed),
            "latent_shape": [int(cfg.autoencoder.latent_channels), side, side],
            "config": OmegaConf.to_container(cfg, resolve=True)}
    optim = {k: tr[k] for k in ("lr", "betas", "eps", "weight_decay", "warmup_steps")}
    conditioner = build_conditioner(cfg)
    if warm is not None:
        warm(conditioner)
    return DiffusionModule(net, formulation, conditioner, build_autoencoder(cfg), optim, dict(tr.ema), cfg.seed, meta)


def warm_captions(cfg: DictConfig, conditioner, data) -> None:
    """Encode an embedded dataset's whole caption vocabulary once (cached on disk, shared by a sweep)."""
    if not (cfg.conditioning.cache and callable(getattr(data.train, "captions", None))):
        return
    from rfsweep.data import build_dataset

    test = build_dataset(cfg.data.name, "test", cfg.data.resolution, cfg.data.seed, cfg.data.path)
    captions = sorted({*data.train.captions(), *data.val.captions(), *test.captions()})
    enc = json.dumps(OmegaConf.to_container(cfg.conditioning.encoders, resolve=True), sort_keys=True)
    key = hashlib.sha1(f"{enc}|{cfg.data.name}|{cfg.data.seed}".encode()).hexdigest()[:16]
    conditioner.warm(captions, Path(cfg.paths.cache) / "embeddings" / f"{key}.pt")


def keep_previous_metrics(run_dir: Path) -> None:
    """Lightning's CSV logger starts metrics.csv afresh; a resumed run keeps the earlier rows in
    metrics-part<k>.csv (the analysis reads all parts)."""
    current = run_dir / "metrics.csv"
    if current.is_file():
        k = len(list(run_dir.glob("metrics-part*.csv")))
        os.replace(current, run_dir / f"metrics-part{k}.csv")


def _loggers(cfg: DictConfig, run_dir: Path, meta: dict) -> list:
    from lightning.pytorch.loggers import CSVLogger

    loggers = []
    if cfg.logger.csv:
        if process_rank() == 0:
            keep_previous_metrics(run_dir)
        loggers.append(CSVLogger(str(run_dir), name="", version=""))
    if cfg.logger.wandb:
        from rfsweep.wandb_logger import make_wandb_logger

        loggers.append(make_wandb_logger(cfg, run_dir, meta))
    return loggers


def process_rank() -> int:
    """This process's global rank: 0 unless DDP started it as another rank (Lightning's launcher, SLURM tasks)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0)


def check_multi_device(cfg: DictConfig) -> None:
    """Several devices per job re-run the job's command once per device: a local multirun would re-run the whole
    sweep in each. Under SLURM each task is one rank, started by the scheduler."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if cfg.trainer.devices > 1 and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN \
            and "SLURM_NTASKS" not in os.environ:
        raise ConfigError(f"config error: trainer.devices={cfg.trainer.devices} in a local multirun (allowed: 1, "
                          f"or several with hydra/launcher=slurm, one task per device, or a single run)")


def write_model_info(module, run_dir: Path, batch_size: int) -> None:
    """`model.json`: what the compute axis of the scaling study needs (parameters, training FLOPs per sample,
    global batch), written before training."""
    from rfsweep.atomic import atomic_write
    from rfsweep.backbones.flops import train_flops_per_sample

    net = module.net
    info = {"backbone": module.meta["backbone"], "depth": len(getattr(net, "blocks", [])) or None,
            "params": sum(p.numel() for p in net.parameters()), "batch_size": int(batch_size),
            "train_flops_per_sample": train_flops_per_sample(net, tuple(module.meta["latent_shape"]),
                                                             module.conditioner.context_len)}
    with atomic_write(run_dir / "model.json", "w") as f:
        json.dump(info, f, indent=1)


def train(cfg: DictConfig, module, data, run_dir: Path) -> bool:
    """Fit, resuming from last.ckpt when present. Returns False if pre-empted (checkpoint written).
    With several devices every rank runs this; only rank 0 writes the run's files."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from rfsweep.train.callbacks import EMAUpdate, FailureRecorder, PeriodicCheckpoint, Preemption
    from rfsweep.train.checkpoint_io import AtomicCheckpointIO

    tr, ckpt_dir = cfg.trainer, run_dir / "checkpoints"
    periodic = PeriodicCheckpoint(ckpt_dir, tr.ckpt_every)
    preemption = Preemption(periodic)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss_ema", mode="min", save_top_k=1,
                           enable_version_counter=False, auto_insert_metric_name=False,
                           save_on_train_epoch_end=False)
    if tr.compile:
        module.net.compile()
    trainer = L.Trainer(
        accelerator=tr.accelerator, devices=tr.devices, precision=tr.precision, max_steps=tr.max_steps,
        val_check_interval=tr.val_every, check_val_every_n_epoch=None, gradient_clip_val=tr.grad_clip,
        callbacks=[EMAUpdate(), periodic, preemption, best, FailureRecorder(run_dir)], logger=_loggers(cfg, run_dir, module.meta),
        default_root_dir=str(run_dir), deterministic=tr.deterministic, plugins=[AtomicCheckpointIO()],
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=min(50, tr.val_every),
        use_distributed_sampler=False,  # the data module shards the training stream itself, by rank
    )
    last = ckpt_dir / LAST
    if process_rank() == 0:
        write_status(run_dir, "running")
        write_model_info(module, run_dir, tr.batch_size)
    with warnings.catch_warnings():
        for message in LIGHTNING_FALSE_ALARMS:
            warnings.filterwarnings("ignore", message=message)
        trainer.fit(module, data, ckpt_path=str(last) if last.is_file() else None)
    if preemption.received:
        if trainer.is_global_zero:
            from rfsweep.train.slurm import requeue, slurm_job_id

            job = slurm_job_id() if preemption.received == "SIGUSR1" and tr.requeue else None
            extra = {"requeue": requeue(job)} if job else {}
            write_status(run_dir, "preempted", step=trainer.global_step, signal=preemption.received, **extra)
            if job:
                print(f"pre-empted: {extra['requeue']}", flush=True)
        return False
    if trainer.is_global_zero:
        write_status(run_dir, "trained", step=trainer.global_step, best_val_loss_ema=_score(best))
    return True


def _score(ckpt_cb) -> float | None:
    s = ckpt_cb.best_model_score
    return None if s is None else float(s)


def evaluated_checkpoint(run_dir: Path) -> Path:
    """The checkpoint evaluation uses: the lowest EMA validation loss, else the last one."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    return ckpt_dir / BEST if (ckpt_dir / BEST).is_file() else ckpt_dir / LAST


def load_weights(module, run_dir: Path) -> dict:
    """Load `evaluated_checkpoint`; returns its info."""
    from rfsweep.train.checkpoint_io import load_checkpoint

    path = evaluated_checkpoint(run_dir)
    ckpt = load_checkpoint(path)
    module.load_state_dict(ckpt["state_dict"])
    score = None
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            score = float(state["best_model_score"])
    return {"path": str(path), "step": int(ckpt["global_step"]), "val_loss": score}


def run(cfg: DictConfig) -> int:
    """The job. Returns a process exit code."""
    if cfg.dry_run:
        print(f"dry-run: variant={variant_name(cfg.formulation)} dataset={cfg.data.slot}", flush=True)
        return 0
    validate(cfg)
    if cfg.data.name == "precomputed" and cfg.eval.enabled:
        from rfsweep.data.precomputed import check_reference_images

        check_reference_images(cfg.data.path)  # before training: evaluation would fail only at the end
    formulation = build_formulation(formulation_spec(cfg.formulation))
    run_dir = Path(cfg.run_dir)
    settings = [(int(s), float(c)) for s, c in cfg.eval.settings]
    expected = [(w, s, c) for w in cfg.eval.weights for s, c in settings]
    state = read_status(run_dir).get("state")
    if state == "done" and (not cfg.eval.enabled or results_complete(run_dir / RESULTS_FILE, expected)):
        print(f"skip: {run_dir} is finished", flush=True)
        return 0
    check_multi_device(cfg)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    module, data = build_module(cfg, formulation)
    if state not in ("trained", "done"):
        completed = train(cfg, module, data, run_dir)
        if process_rank() != 0:  # the other ranks of a multi-device run end with training; rank 0 reports
            return 0
        if not completed:
            print(f"pre-empted: checkpoint written to {run_dir}/checkpoints/{LAST}; rerun the same command to resume",
                  flush=True)
            return 3
    info = load_weights(module, run_dir)
    module.to(torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu"))
    module.place_frozen()
    from rfsweep.evaluate import evaluate_run, sample_grid

    sample_grid(cfg, module, run_dir)
    if cfg.eval.enabled:
        evaluate_run(cfg, module, run_dir, info, settings)
    write_status(run_dir, "done", step=info["step"])
    print(f"done: {run_dir}", flush=True)
    return 0


def main(cfg: DictConfig) -> None:
    from hydra.errors import InstantiationException

    from rfsweep.data import DataError
    from rfsweep.formulations import VariantError
    from rfsweep.results import ResultsError
    from rfsweep.text_encoders import WeightsUnavailable
    from rfsweep.train.checkpoint_io import CheckpointError
    from rfsweep.train.module import NonFiniteLossError

    bad_input = (ConfigError, VariantError, DataError, ResultsError, WeightsUnavailable, CheckpointError,
                 FileNotFoundError)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        try:
            code = run(cfg)
        except InstantiationException as e:  # hydra wraps what a configured class raises: report the cause
            if isinstance(e.__cause__, bad_input):
                raise e.__cause__ from None
            raise
    except bad_input as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = 2
    except NonFiniteLossError as e:
        print(f"failed: {e}; recorded in {cfg.run_dir}/status.json", file=sys.stderr, flush=True)
        code = 1
    if code:
        sys.exit(code)
