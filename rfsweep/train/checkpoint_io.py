"""Atomic checkpoints: written to a temporary file beside the target, fsynced, then renamed over it,
so a kill at any moment leaves either the old checkpoint or the new one, never a truncated file.
Checkpoints hold only tensors and plain containers: they load with `torch.load(weights_only=True)`, always onto the
CPU (memory-mapped): a checkpoint saved from GPU tensors would otherwise come back on the GPU it was saved from, on
every rank at once (GPU 0 under DDP), before Lightning moves each tensor to its own device.

Reading them back: `load_checkpoint` (a Lightning checkpoint), `checkpoint_step` (its step, without its tensors),
`resume_checkpoint` (a run's newest complete one: what training resumes from), `evaluated_checkpoint` (the weights
evaluation uses), `read_weights` (best.safetensors or a checkpoint) and `load_weights` (those weights, into a
module)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors import safe_open

from rfsweep import runfolder
from rfsweep.atomic import atomic_write
from rfsweep.errors import CheckpointError  # raised here, defined in the one home of user errors
from rfsweep.train.callbacks import POSTHOC_PREFIX

DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of a sharded folder, written after every shard


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_write(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint(path)  # Lightning passes map_location=None: the CPU, whatever it says


def load_checkpoint(path) -> dict:
    """The checkpoint's dict, its tensors on the CPU. A file that cannot be deserialised is a CheckpointError; running
    out of memory (or any other error of the machine) is not reported as a corrupt checkpoint."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (FileNotFoundError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as e:
        if "out of memory" in str(e).lower():
            raise
        raise CheckpointError(f"checkpoint {path} is corrupt or not an rfsweep checkpoint "
                              f"({type(e).__name__}: {e})") from e


def checkpoint_step(ckpt: Path) -> int:
    """The global step a checkpoint holds, read without its tensors: a file's, or the meta.pt of FSDP's folder, which
    counts only with DCP's `.metadata` (written once every shard is). CheckpointError when it cannot be read."""
    ckpt = Path(ckpt)
    needed = [ckpt / "meta.pt", ckpt / DCP_METADATA] if ckpt.is_dir() else [ckpt]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt} is incomplete (no {' or '.join(missing)})")
    try:
        return int(load_checkpoint(needed[0])["global_step"])
    except CheckpointError:  # corrupt: load_checkpoint's message names the file
        raise
    except FileNotFoundError as e:  # removed while read (a writer pruning it)
        raise CheckpointError(f"checkpoint {ckpt} was removed while it was read") from e
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt} holds no global_step ({type(e).__name__})") from e


def resume_checkpoint(run_dir: str | Path) -> tuple[Path | None, int]:
    """The checkpoint a run resumes from, and its step: the newest of `runfolder.checkpoint_candidates` that reads
    (`checkpoint_step`) and holds the step its name says (a legacy `last.ckpt`: any step). Found by reading, never by
    a name: a damaged newer one is passed over with one line on stderr. (None, 0): the run has no checkpoint; a
    CheckpointError when it has some and none reads (starting at step 0 would throw the run away)."""
    damaged: list[tuple[Path, str]] = []
    for path in runfolder.checkpoint_candidates(run_dir):
        try:
            step = checkpoint_step(path)
        except CheckpointError as e:
            if not path.exists():  # pruned while read (a reader beside training): a newer one exists, list again
                return resume_checkpoint(run_dir)
            damaged.append((path, str(e)))
            continue
        named = runfolder.named_step(path)
        if named is not None and named != step:
            damaged.append((path, f"checkpoint {path} holds step {step}, not {named}"))
            continue
        if damaged:
            print(f"warning: damaged checkpoint {', '.join(str(p) for p, _ in damaged)} passed over; resuming from "
                  f"{path} (step {step})", file=sys.stderr, flush=True)
        return path, step
    if damaged:
        raise CheckpointError(f"{damaged[0][1]}; no checkpoint of {run_dir} reads (allowed: move the damaged "
                              f"checkpoints away to start the run afresh)")
    return None, 0


def evaluated_checkpoint(run_dir: str | Path) -> Path | None:
    """The weights evaluation uses: best.safetensors (lowest EMA validation loss), else the run's last complete
    checkpoint (`resume_checkpoint`); None: neither."""
    best = runfolder.checkpoint_dir(run_dir) / runfolder.BEST
    return best if best.is_file() else resume_checkpoint(run_dir)[0]


def read_weights(path: Path) -> tuple[dict, int, float | None]:
    """(state dict, step, EMA validation loss) of best.safetensors (memory-mapped) or a Lightning checkpoint."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # truncated or not a safetensors file
            raise CheckpointError(f"weights {path} are corrupt ({type(e).__name__}: {e})") from e
        score = meta.get("val/loss_ema")
        return state, int(meta.get("step", 0)), None if score in (None, "None") else float(score)
    ckpt = load_checkpoint(path)
    score = None
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("BestWeights") and state.get("best_score") is not None:
            score = float(state["best_score"])
    return ckpt["state_dict"], int(ckpt["global_step"]), score


def load_weights(module, run_dir: Path) -> dict:
    """Load `evaluated_checkpoint` into the module; returns its path, step and EMA validation loss."""
    path = evaluated_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"{run_dir}: no checkpoints/{runfolder.BEST} and no step checkpoint (allowed: a run "
                              f"folder written by python -m rfsweep)")
    state, step, score = read_weights(path)
    missing, unexpected = module.load_state_dict(state, strict=False)  # best.safetensors has no post-hoc EMAs
    wrong = [k for k in missing if not k.startswith(POSTHOC_PREFIX)] + list(unexpected)
    if wrong:
        raise CheckpointError(f"weights {path} do not fit the run's network ({len(wrong)} keys: e.g. {wrong[0]}; "
                              f"allowed: weights written by this run's config)")
    return {"path": str(path), "step": step, "val_loss": score}
