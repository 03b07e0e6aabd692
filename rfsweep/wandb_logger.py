"""The W&B logger, configured so it never blocks a run: offline unless an API key is configured (then
`wandb sync` uploads later), runs grouped by sweep and tagged so a dashboard can slice them."""

from __future__ import annotations

import hashlib
import netrc
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def make_wandb_logger(cfg: DictConfig, run_dir: Path, meta: dict):
    from lightning.pytorch.loggers import WandbLogger

    offline = os.environ.get("WANDB_MODE") == "offline" or not has_wandb_credentials()
    os.environ.setdefault("WANDB_SILENT", "true")
    run_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]  # stable: resumes the same run
    return WandbLogger(
        project=cfg.logger.project, entity=cfg.logger.entity, name=cfg.job_name, group=cfg.name, id=run_id,
        save_dir=str(run_dir), offline=offline, resume="allow" if not offline else None,
        tags=[f"family:{meta['family']}", f"variant:{meta['variant']}", f"dataset:{meta['dataset']}",
              f"backbone:{meta['backbone']}"],
        config=OmegaConf.to_container(cfg, resolve=True), settings={"init_timeout": 30, "silent": True},
    )
