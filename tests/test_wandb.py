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


def test_eval_only_rerun_logs_to_the_same_wandb_run(tmp_path, monkeypatch):
    """A rerun that only evaluates (training finished before a pre-emption) has no trainer: the evaluation
    reopens the run's W&B run (stable id) instead of logging nowhere; with logger=csv nothing is opened."""
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    import rfsweep.wandb_logger
    from rfsweep.evaluate import _log_wandb

    class Experiment:
        def __init__(self):
            self.logged, self.finished = [], False

        def log(self, d):
            self.logged.append(d)

        def finish(self):
            self.finished = True

    opened = []

    def fake_logger(cfg, run_dir, meta):
        exp = Experiment()
        opened.append((run_dir, meta, exp))
        return type("WandbLogger", (), {"experiment": exp})()

    monkeypatch.setattr(rfsweep.wandb_logger, "make_wandb_logger", fake_logger)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "samples.png")
    module = SimpleNamespace(meta={"variant": "rf"}, _trainer=None)
    rows = [{"weights": "ema", "steps": 25, "cfg": 5.0, "clip_score": 0.9, "fid": 0.1}]
    _log_wandb(compose_cfg(["logger=csv"]), module, rows, tmp_path)
    assert opened == []
    _log_wandb(compose_cfg(["logger=default"]), module, rows, tmp_path)
    (run_dir, meta, exp), = opened
    assert run_dir == tmp_path and meta == {"variant": "rf"} and exp.finished
    assert exp.logged[0] == {"eval/ema_steps25_cfg5/clip_score": 0.9, "eval/ema_steps25_cfg5/fid": 0.1}
    assert "samples" in exp.logged[1]
