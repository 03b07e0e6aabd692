"""A stop at a step boundary costs nothing the schedule did not ask for, and changes nothing that is evaluated.

A stop (a pre-emption signal) at step s writes its checkpoint once, at s, and ends training: no validation Lightning
would add for the stop, no second checkpoint when training ends, no best weights of an unscheduled step. When s is a
validation step, its scheduled validation runs first and the checkpoint holds it, so the resumed run neither repeats
nor skips it. Either way the resumed run ends with the weights, validation rows and best weights of an uninterrupted
one. With gradient accumulation, validation comes every `val_every` optimizer steps whatever k is, and a resume with
k = 2 repeats an uninterrupted k = 2 run (Lightning >= 2.5: earlier versions stepped the optimizer after one
micro-batch on resume).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from rfsweep.cluster.signals import PreemptionGuard
from rfsweep.run.builders import build_module
from rfsweep.run.fit import fit
from rfsweep.runfolder import metrics_files
from rfsweep.train import callbacks
from rfsweep.train.checkpoint_io import resume_checkpoint
from tests.helpers import compose_cfg, tiny

STEPS = 12


def _fit(root, steps: int = STEPS, stop_at: int | None = None, extra=(), counts: dict | None = None):
    """Train in this process; `stop_at`: a stop signal is noted at that step's end. Returns the run folder."""
    cfg = compose_cfg([*tiny(root, steps), "trainer.val_every=4", "trainer.ckpt_every=4", *extra],
                      run_dir=str(root / "run"))
    module, data = build_module(cfg, train=True)
    guard = PreemptionGuard()
    original = callbacks.StepAgreement.on_train_batch_end
    save = callbacks.PeriodicCheckpoint.save

    def preempt(self, trainer, pl_module, outputs, batch, batch_idx):
        if stop_at is not None and trainer.global_step == stop_at and callbacks.completed_step(trainer, batch_idx):
            self.guard.note("SIGUSR1")
        original(self, trainer, pl_module, outputs, batch, batch_idx)

    def counted(self, trainer):
        if counts is not None:
            counts[trainer.global_step] = counts.get(trainer.global_step, 0) + 1
        save(self, trainer)

    mp = pytest.MonkeyPatch()
    mp.setattr(callbacks.StepAgreement, "on_train_batch_end", preempt)
    mp.setattr(callbacks.PeriodicCheckpoint, "save", counted)
    try:
        step = fit(cfg, module, data, root / "run", guard, resume=resume_checkpoint(root / "run")[0])
    finally:
        mp.undo()
    assert step == (stop_at if stop_at is not None else steps)
    return root / "run"


def _val_rows(run) -> pd.DataFrame:
    df = pd.concat([pd.read_csv(p) for p in metrics_files(run) if p.is_file()])
    cols = sorted(c for c in df.columns if c.startswith("val/"))
    return df.dropna(subset=cols, how="all")[["step", *cols]].sort_values("step").reset_index(drop=True)


def _last(run) -> dict:
    return torch.load(resume_checkpoint(run)[0], weights_only=True)


def _best(run):
    from safetensors import safe_open

    with safe_open(str(run / "checkpoints" / "best.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("ref"))


@pytest.mark.parametrize("stop_at, scheduled", [(6, False), (8, True)])
def test_a_stop_costs_one_checkpoint_and_changes_nothing_evaluated(tmp_path, reference, stop_at, scheduled):
    counts: dict = {}
    run = _fit(tmp_path, stop_at=stop_at, counts=counts)
    assert counts == {4: 1, stop_at: 1}  # the periodic one and the stop's: each step written once
    assert _last(run)["global_step"] == stop_at
    validated = list(_val_rows(run)["step"] + 1)  # Lightning logs a step's validation under the step before it
    assert validated == [s for s in (4, 8) if s <= stop_at]  # the stop's step is validated only if scheduled
    assert _best(run)[1]["step"] in ("4", "8")  # no best weights of an unscheduled step
    _fit(tmp_path)  # the same run, resumed to the end
    ref_rows, rows = _val_rows(reference), _val_rows(run)
    pd.testing.assert_frame_equal(rows, ref_rows)  # every scheduled validation once, none repeated or skipped
    a, b = _last(run)["state_dict"], _last(reference)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    (wa, ma), (wb, mb) = _best(run), _best(reference)
    assert ma == mb and all(torch.equal(wa[k], wb[k]) for k in wb)


def test_validation_counts_optimizer_steps_with_accumulation_and_a_resume_repeats_the_run(tmp_path):
    k2 = ["trainer.accumulate_grad_batches=2"]
    plain = _fit(tmp_path / "k1")
    whole = _fit(tmp_path / "k2", extra=k2)
    assert list(_val_rows(whole)["step"]) == list(_val_rows(plain)["step"])  # every 4 optimizer steps, not 2
    stopped = _fit(tmp_path / "k2s", stop_at=6, extra=k2)
    assert _last(stopped)["global_step"] == 6
    _fit(tmp_path / "k2s", extra=k2)
    a, b = _last(stopped)["state_dict"], _last(whole)["state_dict"]
    assert _last(stopped)["global_step"] == STEPS and all(torch.equal(a[k], b[k]) for k in b)
    pd.testing.assert_frame_equal(_val_rows(stopped), _val_rows(whole))


def test_best_weights_are_written_without_a_second_copy_in_memory(tmp_path, monkeypatch):
    import safetensors.torch

    def refuse(*a, **k):
        raise AssertionError("safetensors.torch.save builds the whole file in memory")

    monkeypatch.setattr(safetensors.torch, "save", refuse)
    run = _fit(tmp_path, steps=4)
    assert _best(run)[1]["step"] == "4"


def test_under_ddp_only_the_writer_gathers_the_best_weights(tmp_path, monkeypatch):
    from types import SimpleNamespace

    best = callbacks.BestWeights(tmp_path / "best.safetensors")
    monkeypatch.setattr(callbacks, "full_state_dict", lambda m: (_ for _ in ()).throw(AssertionError("gathered")))
    monkeypatch.setattr(callbacks, "sharded", lambda trainer: False)
    best.save(SimpleNamespace(is_global_zero=False), None)  # rank 1 of a DDP run: returns before copying anything
    assert not (tmp_path / "best.safetensors").exists()


def test_a_takeover_during_a_validation_writes_neither_its_best_weights_nor_its_checkpoint(tmp_path, monkeypatch):
    """The lease is read before the validation step (StepAgreement) and again by the write fence right before what
    the validation writes: taken over during the validation of step 8, the run keeps step 4's best weights and
    checkpoint and training ends."""
    from rfsweep.fence import Fence, LeaseLost, fenced

    cfg = compose_cfg([*tiny(tmp_path, STEPS), "trainer.val_every=4", "trainer.ckpt_every=4"],
                      run_dir=str(tmp_path / "run"))
    module, data = build_module(cfg, train=True)
    guard, ours = PreemptionGuard(), {"now": True}
    lease = type("Lease", (), {"confirm": lambda self: ours["now"]})()
    validate = type(module).on_validation_epoch_end

    def taken_at_8(self):
        if self.trainer.global_step == 8:
            ours["now"] = False
        return validate(self)

    monkeypatch.setattr(type(module), "on_validation_epoch_end", taken_at_8)
    with pytest.raises(LeaseLost, match="taken over"), fenced(Fence(tmp_path / "run", lease)):
        fit(cfg, module, data, tmp_path / "run", guard)
    run = tmp_path / "run"
    assert _last(run)["global_step"] == 4 and _best(run)[1]["step"] == "4"


def test_a_sigterm_before_training_starts_is_a_stop_like_any_other(tmp_path, monkeypatch):
    """Lightning 2.5-2.6 install their own SIGTERM handler right before training (live until on_train_start): it
    would broadcast inside the handler and end the run with SIGTERMException (a SystemExit) and no checkpoint. `fit`
    keeps it from being installed: a SIGTERM while the training data loader is built is noted by the job's guard,
    and training stops after its first step with a checkpoint, as at any other step."""
    import os
    import signal

    cfg = compose_cfg([*tiny(tmp_path, STEPS), "trainer.val_every=4", "trainer.ckpt_every=4"],
                      run_dir=str(tmp_path / "run"))
    module, data = build_module(cfg, train=True)
    loader = type(data).train_dataloader

    def sigterm_then_loader(self):
        os.kill(os.getpid(), signal.SIGTERM)  # between strategy.setup and on_train_start
        return loader(self)

    monkeypatch.setattr(type(data), "train_dataloader", sigterm_then_loader)
    with PreemptionGuard() as guard:
        step = fit(cfg, module, data, tmp_path / "run", guard)
    assert guard.received == "SIGTERM" and step == 1
    from rfsweep.train.checkpoint_io import resume_checkpoint

    path, at = resume_checkpoint(tmp_path / "run")
    assert at == 1 and path is not None
