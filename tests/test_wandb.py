"""The W&B logger runs offline without credentials, never blocks, and tags runs so dashboards can slice them."""

import time

from rfsweep.wandb_logger import make_wandb_logger
from tests.helpers import compose_cfg, tiny


def test_wandb_offline_grouped_and_tagged(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no credentials
    cfg = compose_cfg([*tiny(tmp_path), "logger=default", "name=sweepA"], run_dir=str(tmp_path / "run"))
    cfg.job_name = "shapes/rf/mmdit/seed0"
    meta = {"family": "rf", "variant": "rf", "dataset": "shapes", "backbone": "mmdit"}
    start = time.time()
    logger = make_wandb_logger(cfg, tmp_path / "run", meta)
    logger.log_metrics({"train/loss": 1.0}, step=1)
    run = logger.experiment
    assert run.settings.mode in ("offline", "dryrun") and run.group == "sweepA"  # wandb calls offline "dryrun"
    assert set(run.tags) == {"family:rf", "variant:rf", "dataset:shapes", "backbone:mmdit"}
    run.finish()
    assert time.time() - start < 120
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
