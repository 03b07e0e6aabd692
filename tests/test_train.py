import csv
import hashlib
import json

import lightning
import pytest
import torch

from rfsweep.cluster.signals import PreemptionGuard
from rfsweep.run.builders import build_module
from rfsweep.run.fit import fit
from rfsweep.runfolder import checkpoint_path, read_status
from rfsweep.train.callbacks import STEP_ORDER, in_step_order
from rfsweep.train.diffusion_module import NonFiniteLossError
from rfsweep.train.ema import make_ema, update_ema
from tests.helpers import compose_cfg, run_cli, tiny


def _fit(tmp_path, extra=(), steps=8):
    cfg = compose_cfg([*tiny(tmp_path, steps), *extra], run_dir=str(tmp_path / "run"))
    module, data = build_module(cfg)
    assert fit(cfg, module, data, tmp_path / "run", PreemptionGuard()) == steps
    return module, tmp_path / "run"


STEP_NAMES = ["StepAgreement", "EMAUpdate", "PostHocSnapshots", "BestWeights", "BestValidation", "PeriodicCheckpoint",
              "Preemption", "RungStop", "FailureRecorder", "Progress", "Throughput", "StepProgressBar",
              "LearningRateMonitor"]


def test_the_callbacks_run_in_their_documented_order(tmp_path, monkeypatch):
    """Lightning calls the callbacks in the Trainer's list order at every hook: `fit` passes them through
    `in_step_order`, so the table STEP_ORDER (each with why it sits there) is the order. Moving one is a change of
    this test and of the table's reasons together; a callback the table does not name is refused."""
    assert [name for name, _ in STEP_ORDER] == STEP_NAMES and all(why for _, why in STEP_ORDER)
    built = {}

    class Built(Exception):
        pass

    def trainer(**kwargs):  # what fit hands the Trainer, then stop: nothing is trained
        built.update(kwargs)
        raise Built

    monkeypatch.setattr(lightning, "Trainer", trainer)
    cfg = compose_cfg([*tiny(tmp_path), "ema=posthoc"], run_dir=str(tmp_path / "run"))
    module, data = build_module(cfg)
    with pytest.raises(Built):
        fit(cfg, module, data, tmp_path / "run", PreemptionGuard())
    names = [type(c).__name__ for c in built["callbacks"]]
    # no W&B run (BestValidation), no terminal (StepProgressBar) and no race's rung (RungStop) here; the rest in the
    # table's order
    assert names == [n for n in STEP_NAMES if n not in ("BestValidation", "StepProgressBar", "RungStop")]
    assert [type(c).__name__ for c in in_step_order(reversed(built["callbacks"]))] == names
    with pytest.raises(Built):  # a launch that stops at a rung: RungStop in its place
        fit(compose_cfg([*tiny(tmp_path), "ema=posthoc", "rung.stop_at=4"], run_dir=str(tmp_path / "run")), module,
            data, tmp_path / "run", PreemptionGuard())
    rung = [type(c).__name__ for c in built["callbacks"]]
    assert rung == [n for n in STEP_NAMES if n not in ("BestValidation", "StepProgressBar")]
    with pytest.raises(ValueError, match="no place in"):
        in_step_order([*built["callbacks"], lightning.Callback()])


def test_ema_update_rule():
    net = torch.nn.Linear(3, 3)
    ema = make_ema(net)
    before = ema.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    update_ema(ema, net, decay=0.99)
    assert torch.allclose(ema.weight, 0.99 * before + 0.01 * net.weight)


def test_ema_every_k_batches(tmp_path):
    # every=100 over 8 steps: never updated, so EMA still holds the initial weights; every=1, decay=0: a copy.
    init = build_module(compose_cfg(tiny(tmp_path), run_dir=str(tmp_path / "x")))[0].net.state_dict()
    m, _ = _fit(tmp_path / "a", ["ema.every=100"])
    for k, v in m.ema_net.state_dict().items():
        assert torch.equal(v, init[k]), k
    m, _ = _fit(tmp_path / "b", ["ema.every=1", "ema.decay=0.0"])
    for k, v in m.ema_net.state_dict().items():
        assert torch.equal(v, m.net.state_dict()[k]), k


def test_checkpoint_contents_load_weights_only(tmp_path):
    module, run = _fit(tmp_path)
    ckpt = torch.load(checkpoint_path(run, 8), weights_only=True)
    assert ckpt["global_step"] == 8
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("net.") for k in keys) and any(k.startswith("ema_net.") for k in keys)
    assert not any("conditioner" in k or "encoder" in k for k in keys)  # frozen encoders are not saved
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"] and ckpt["loops"]
    assert {"torch", "python", "numpy"} <= set(ckpt["rng"])
    assert ckpt["rfsweep"]["variant"] == "rf/lognorm(0.00, 1.00)"
    from safetensors import safe_open

    with safe_open(str(run / "checkpoints" / "best.safetensors"), framework="pt") as f:  # weights only
        assert set(f.keys()) == set(ckpt["state_dict"]) and f.metadata()["step"] in ("4", "8")
        assert float(f.metadata()["val/loss_ema"]) == read_status(run)["best_val_loss_ema"]
    assert read_status(run)["state"] == "trained"


def test_validation_loss_is_reproducible(tmp_path):
    module, run = _fit(tmp_path, steps=4)
    import csv

    rows = list(csv.DictReader(open(run / "metrics.csv")))
    vals = [r for r in rows if r.get("val/loss_ema")]
    assert vals and all(r.get(f"val_t/ema_t{i}") for r in vals for i in range(8))
    # Re-running validation on the same weights gives the same number: noise and t are fixed.
    import lightning as L

    dm = build_module(compose_cfg(tiny(tmp_path, 4), run_dir=str(run)))[1]
    t = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    a = t.validate(module, dm, verbose=False)[0]["val/loss_ema"]
    b = t.validate(module, dm, verbose=False)[0]["val/loss_ema"]
    assert a == b and abs(a - float(vals[-1]["val/loss_ema"])) < 1e-5


class _NaNAfter(torch.nn.Module):
    def __init__(self, net, calls):
        super().__init__()
        self.net, self.calls = net, calls

    def forward(self, x, t, context, pooled):
        self.calls -= 1
        out = self.net(x, t, context, pooled)
        return out * float("nan") if self.calls < 0 else out


def test_non_finite_loss_stops_and_is_recorded(tmp_path):
    cfg = compose_cfg(tiny(tmp_path, 8), run_dir=str(tmp_path / "run"))
    module, data = build_module(cfg)
    module.net = _NaNAfter(module.net, calls=3)
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        fit(cfg, module, data, tmp_path / "run", PreemptionGuard())
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "NonFiniteLossError" in status["reason"]


def test_cli_trains_validates_samples_and_skips_when_done(tmp_path):
    r = run_cli(tiny(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    run = next((tmp_path / "runs").rglob("status.json")).parent
    for f in ("samples.png", "samples.txt", "metrics.csv", "config.json", "checkpoints/step-00000008.ckpt",
              "checkpoints/best.safetensors"):
        assert (run / f).is_file(), f
    assert read_status(run)["state"] == "done"
    r2 = run_cli(tiny(tmp_path))
    assert r2.returncode == 0 and "skip:" in r2.stdout


def _pre_encode(tmp_path, splits=("train", "val", "test"), keep_images=None):
    from rfsweep.data import build_dataset
    from rfsweep.data.precomputed import precompute
    from rfsweep.run.builders import build_autoencoder, build_conditioner, encoding_signature

    cfg = compose_cfg(tiny(tmp_path), run_dir=str(tmp_path / "x"))
    for split in splits:
        ds = torch.utils.data.Subset(build_dataset("shapes", split), range(64))
        precompute(ds, build_autoencoder(cfg), build_conditioner(cfg), tmp_path / "pre", split, encoding_signature(cfg),
                   keep_images=keep_images)
    return ["data.name=precomputed", f"data.path={tmp_path / 'pre'}"]


def test_trains_on_pre_encoded_data(tmp_path):
    module, run = _fit(tmp_path, _pre_encode(tmp_path, ("train", "val")), steps=4)
    assert torch.load(checkpoint_path(run, 4), weights_only=True)["global_step"] == 4


def test_evaluates_on_pre_encoded_data(tmp_path):
    """Train and evaluate from a pre-encoded folder: prompts from its test captions, FID and CLIP score against
    its kept test images, the real-images floor from its val images; the reference cache is keyed by the folder."""
    data = _pre_encode(tmp_path)
    ev = ["eval=embedded", "eval.n_samples=32", "eval.batch_size=32", "eval.settings=[[2,1.0]]", "eval.weights=[ema]"]
    r = run_cli([*tiny(tmp_path, steps=4), *data, *ev])
    assert r.returncode == 0, r.stderr[-3000:]
    with open(next((tmp_path / "runs").rglob("results.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert [r["weights"] for r in rows] == ["ema", "real"] and rows[1]["variant"] == "real images"
    assert all(int(r["n_samples"]) == 32 for r in rows)
    real_fid = float(rows[1]["fid"])
    assert 0 <= real_fid < 1 and float(rows[0]["fid"]) > real_fid  # 4 training steps: far from real
    cached = [p.name for p in (tmp_path / "cache" / "reference").iterdir()]
    digest = hashlib.sha1(str((tmp_path / "pre").resolve()).encode()).hexdigest()[:12]
    assert len(cached) == 1 and "precomputed" in cached[0] and digest in cached[0]


def test_pre_encoded_data_without_reference_images_is_refused_before_training(tmp_path):
    data = _pre_encode(tmp_path, keep_images=False)
    r = run_cli([*tiny(tmp_path, steps=4), *data, "eval=embedded"])
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert "data.path=" in lines[0] and "the val split holds no reference images" in lines[0]
    assert "allowed" in lines[0] and not list((tmp_path / "runs").rglob("*.ckpt"))
    r = run_cli([*tiny(tmp_path, steps=4), *data])  # eval=none: trains
    assert r.returncode == 0, r.stderr[-2000:]


def test_corrupt_checkpoints_fail_with_one_line_and_keep_files_or_fall_back_to_the_previous(tmp_path):
    r = run_cli([*tiny(tmp_path, steps=4), "trainer.ckpt_every=2"])
    assert r.returncode == 0, r.stderr[-2000:]
    run = next((tmp_path / "runs").rglob("status.json")).parent
    (run / "status.json").unlink()  # not finished: the rerun resumes from its last complete checkpoint
    newest, previous = checkpoint_path(run, 4), checkpoint_path(run, 2)
    kept = previous.read_bytes()
    for path in (newest, previous):
        path.write_bytes(path.read_bytes()[:1000])  # truncated
    before = sorted(p.name for p in run.rglob("*"))
    r = run_cli([*tiny(tmp_path, steps=8), "trainer.ckpt_every=2"])
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and newest.name in lines[0] and "corrupt" in lines[0], r.stderr[-2000:]
    after = {p.name for p in run.rglob("*")}
    assert set(before) - {"metrics.csv"} <= after  # nothing lost
    previous.write_bytes(kept)  # only the newest damaged: the rerun resumes from the one before, with one line
    r = run_cli([*tiny(tmp_path, steps=8), "trainer.ckpt_every=2"])
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if "damaged checkpoint" in ln]
    assert len(lines) == 1 and str(newest) in lines[0] and str(previous) in lines[0], r.stderr[-2000:]
    assert torch.load(checkpoint_path(run, 8), weights_only=True)["global_step"] == 8


def test_only_frozen_modules_are_in_eval_mode_while_training(tmp_path):
    """The warning Lightning gives for modules in eval mode is silenced in `train`: it must stay a false alarm."""
    import lightning as L

    seen = []

    class Check(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            evals = [m for m in module.modules() if not m.training]
            seen.append(module.net.training and evals
                        and not any(p.requires_grad for m in evals for p in m.parameters(recurse=False)))

    cfg = compose_cfg(tiny(tmp_path, 3), run_dir=str(tmp_path / "run"))
    module, data = build_module(cfg)
    L.Trainer(accelerator="cpu", max_steps=3, logger=False, callbacks=[Check()], enable_checkpointing=False,
              enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0).fit(module, data)
    assert seen == [True] * 3


def test_signal_handlers_are_the_guards_during_the_job_and_restored_after(tmp_path):
    """The job's guard holds the pre-emption signals while it runs, also through Lightning's `fit` (which installs
    its own); the handlers from before (e.g. submitit's) come back afterwards."""
    import signal

    def mine(signum, frame):
        pass

    seen = []
    old = {s: signal.signal(s, mine) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    cfg = compose_cfg(tiny(tmp_path, 2), run_dir=str(tmp_path / "run"))
    module, data = build_module(cfg)
    module.on_train_batch_end = lambda *a: seen.append(
        [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)])
    try:
        with PreemptionGuard() as guard:
            fit(cfg, module, data, tmp_path / "run", guard)
        assert seen and all(h == guard._handle for step in seen for h in step), seen
        assert signal.getsignal(signal.SIGUSR1) is mine and signal.getsignal(signal.SIGUSR2) is mine
    finally:
        for s, h in old.items():
            signal.signal(s, h)
