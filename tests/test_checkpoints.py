"""Checkpoints that cannot be lost (torchtitan's order): each step's checkpoint has its own name
(`checkpoints/step-<N>.ckpt`, a file or FSDP's folder), is written whole and synced before older ones are pruned to
`trainer.keep_checkpoints`, and the one a run resumes from is found by reading (`resume_checkpoint`), never by a name:
a kill at any moment, or a damaged newest checkpoint, resumes from the last complete one, never from step 0.

FSDP runs here on one process (gloo): the same sharded folders as on several, in seconds."""

from __future__ import annotations

import pytest
import torch

from rfsweep import runfolder
from rfsweep.cluster.signals import PreemptionGuard
from rfsweep.errors import ConfigError
from rfsweep.run.builders import build_module
from rfsweep.run.config import validate
from rfsweep.run.fit import fit
from rfsweep.train import callbacks
from rfsweep.train.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointError,
    checkpoint_step,
    load_checkpoint,
    resume_checkpoint,
)
from tests.helpers import compose_cfg, tiny

FSDP = ("trainer.strategy=fsdp", "trainer.devices=1")


class Killed(RuntimeError):
    """A kill at a chosen point of a checkpoint's write."""


@pytest.fixture(autouse=True)
def _no_process_group_left():
    yield
    if torch.distributed.is_initialized():  # a fit that ended in Killed leaves FSDP's group behind
        torch.distributed.destroy_process_group()


def _fit(root, steps: int = 6, extra=(), resume=None):
    cfg = compose_cfg([*tiny(root, steps), "formulation=edm", "backbone.depth=2", "trainer.ckpt_every=2", *extra],
                      run_dir=str(root / "run"))
    module, data = build_module(cfg)
    return fit(cfg, module, data, root / "run", PreemptionGuard(), resume=resume)


def _names(run) -> list[str]:
    return sorted(p.name for p in runfolder.checkpoint_dir(run).iterdir() if ".ckpt" in p.name)


def _step(n: int) -> str:
    return runfolder.CHECKPOINT.format(n)


def _kill_at(monkeypatch, name: str, call: int) -> None:
    """Kill the writer at its `call`-th call of `callbacks.<name>` (once per checkpoint; fsync_tree: the folder
    written, not yet renamed; fsync_dir: renamed in, the older ones not yet pruned)."""
    real, calls = getattr(callbacks, name), []

    def killed(path):
        calls.append(path)
        if len(calls) == call:
            raise Killed(f"killed in {name} at its call {call}")
        real(path)

    monkeypatch.setattr(callbacks, name, killed)


@pytest.mark.parametrize("where, resumed, left", [
    ("fsync_tree", 4, [_step(2), _step(4), _step(6) + ".partial"]),  # shards written, not renamed
    ("fsync_dir", 6, [_step(2), _step(4), _step(6)]),  # renamed in, the previous not yet pruned
])
def test_a_kill_inside_the_fsdp_write_resumes_from_the_last_complete_folder(tmp_path, monkeypatch, where, resumed,
                                                                            left):
    _kill_at(monkeypatch, where, 3)  # the checkpoint of step 6
    with pytest.raises(Killed):
        _fit(tmp_path, extra=FSDP)
    monkeypatch.undo()
    run = tmp_path / "run"
    assert _names(run) == left
    path, step = resume_checkpoint(run)
    assert (path, step) == (runfolder.checkpoint_path(run, resumed), resumed) and path.is_dir()
    assert _fit(tmp_path, steps=8, extra=FSDP, resume=path) == 8
    assert _names(run) == [_step(6), _step(8)]  # the leftover .partial and the unpruned ones gone


def test_a_folder_of_before_step_names_resumes_from_its_last_ckpt(tmp_path):
    """A run written before step-numbered checkpoints: a kill inside the old swap left `last.ckpt.old` and
    `last.ckpt.partial`; it resumes from `last.ckpt.old`, and the next checkpoint replaces both."""
    _fit(tmp_path, steps=4, extra=FSDP)
    run = tmp_path / "run"
    folder = runfolder.checkpoint_dir(run)
    (folder / _step(4)).rename(folder / "last.ckpt.old")
    (folder / _step(2)).rename(folder / "last.ckpt.partial")
    path, step = resume_checkpoint(run)
    assert (path.name, step) == ("last.ckpt.old", 4)
    assert _fit(tmp_path, steps=6, extra=FSDP, resume=path) == 6
    assert _names(run) == ["last.ckpt.old", _step(6)]  # the legacy one counts as the oldest: kept as the second
    _fit(tmp_path, steps=8, extra=FSDP, resume=resume_checkpoint(run)[0])
    assert _names(run) == [_step(6), _step(8)]


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "fsdp"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys, sharded):
    _fit(tmp_path, extra=FSDP if sharded else ())
    run = tmp_path / "run"
    newest, previous = runfolder.checkpoint_path(run, 6), runfolder.checkpoint_path(run, 4)
    if sharded:
        (newest / "meta.pt").unlink()
    else:
        newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="step-00000006"):
        checkpoint_step(newest)  # never a silent 0
    capsys.readouterr()
    assert resume_checkpoint(run) == (previous, 4)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and str(newest) in lines[0] and str(previous) in lines[0], lines
    if sharded:
        (previous / ".metadata").unlink()  # DCP's index: written last, so without it the shards are incomplete
    else:
        previous.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no checkpoint of .* reads"):
        resume_checkpoint(run)  # none reads: an error, not a silent restart at step 0


def test_a_checkpoint_named_for_another_step_is_passed_over(tmp_path, capsys):
    _fit(tmp_path, steps=4)
    run = tmp_path / "run"
    runfolder.checkpoint_path(run, 4).rename(runfolder.checkpoint_path(run, 8))
    assert resume_checkpoint(run) == (runfolder.checkpoint_path(run, 2), 2)
    assert "step-00000008" in capsys.readouterr().err


@pytest.mark.parametrize("keep, extra", [(1, ()), (3, ()), (1, FSDP)], ids=["keep1", "keep3", "keep1-fsdp"])
def test_at_most_keep_checkpoints_are_kept(tmp_path, keep, extra):
    _fit(tmp_path, steps=8, extra=(f"trainer.keep_checkpoints={keep}", *extra))
    assert _names(tmp_path / "run") == [_step(s) for s in (2, 4, 6, 8)[-keep:]]


def test_keep_checkpoints_is_at_least_one(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.keep_checkpoints=0 is out of range \(allowed: an integer >= 1"):
        validate(compose_cfg([*tiny(tmp_path), "trainer.keep_checkpoints=0"]))


def test_the_previous_checkpoint_is_whole_while_the_next_is_written(tmp_path, monkeypatch):
    """At every write the previous checkpoint is found and complete, even keeping one; a write killed half way
    (step 6) leaves it, and no temporary file, for the next writer."""
    run, seen = tmp_path / "run", {}
    real = AtomicCheckpointIO.save_checkpoint

    def torn(self, checkpoint, path, storage_options=None):
        step = checkpoint["global_step"]
        seen[step] = resume_checkpoint(run)[1]
        if step == 6:
            from rfsweep.atomic import atomic_write

            with atomic_write(path) as f:
                f.write(b"half a checkpoint")
                raise Killed("killed while writing step 6")
        real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", torn)
    with pytest.raises(Killed):
        _fit(tmp_path, steps=8, extra=["trainer.keep_checkpoints=1"])
    assert seen == {2: 0, 4: 2, 6: 4}
    assert _names(run) == [_step(4)] and not list(runfolder.checkpoint_dir(run).glob(".*.tmp"))
    path, step = resume_checkpoint(run)
    assert step == 4 and load_checkpoint(path)["global_step"] == 4


def test_the_previous_folder_is_whole_while_the_next_is_synced(tmp_path, monkeypatch):
    run, seen = tmp_path / "run", {}
    real = callbacks.fsync_tree

    def watched(path):
        seen[runfolder.named_step(path.with_suffix(""))] = resume_checkpoint(run)[1]  # <name>.partial: not yet in
        real(path)

    monkeypatch.setattr(callbacks, "fsync_tree", watched)
    _fit(tmp_path, extra=[*FSDP, "trainer.keep_checkpoints=1"])
    assert seen == {2: 0, 4: 2, 6: 4}


def test_a_process_that_lost_its_folder_prunes_nothing(tmp_path, monkeypatch):
    """Taken over right after step 6's checkpoint is renamed in: the older one is not pruned (the write fence is
    asked before each removal), the new owner finds both."""
    from rfsweep.fence import Fence, LeaseLost, fenced

    run, ours = tmp_path / "run", {"now": True}
    lease = type("Lease", (), {"confirm": lambda self: ours["now"]})()
    real = callbacks.fsync_dir

    def taken_at_6(path):
        real(path)
        ours["now"] = ours["now"] and not runfolder.checkpoint_path(run, 6).exists()

    monkeypatch.setattr(callbacks, "fsync_dir", taken_at_6)
    with pytest.raises(LeaseLost), fenced(Fence(run, lease)):
        _fit(tmp_path, extra=["trainer.keep_checkpoints=1"])
    assert _names(run) == [_step(4), _step(6)]
