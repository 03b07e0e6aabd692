"""Atomic checkpoints: written to a temporary file beside the target, fsynced, then renamed over it,
so a kill at any moment leaves either the old checkpoint or the new one, never a truncated file.
Checkpoints hold only tensors and plain containers: they load with `torch.load(weights_only=True)`, always onto the
CPU (memory-mapped): a checkpoint saved from GPU tensors would otherwise come back on the GPU it was saved from, on
every rank at once (GPU 0 under DDP), before Lightning moves each tensor to its own device.

Reading them back: `load_checkpoint` (a Lightning checkpoint), `checkpoint_step` (its step, without its tensors),
`read_weights` (best.safetensors or a checkpoint) and `load_weights` (the weights evaluation uses, into a module)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors import safe_open

from rfsweep.atomic import atomic_write
from rfsweep.errors import CheckpointError  # noqa: F401 (raised here, defined in the one home of user errors)
from rfsweep.runfolder import evaluated_checkpoint
from rfsweep.train.callbacks import POSTHOC_PREFIX


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
    """The global step a checkpoint (a file, or FSDP's folder with its meta.pt) holds, without its tensors."""
    path = ckpt / "meta.pt" if ckpt.is_dir() else ckpt
    if not path.is_file():
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:
        return 0


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
    """Load `runfolder.evaluated_checkpoint` into the module; returns its path, step and EMA validation loss."""
    path = evaluated_checkpoint(run_dir)
    state, step, score = read_weights(path)
    missing, unexpected = module.load_state_dict(state, strict=False)  # best.safetensors has no post-hoc EMAs
    wrong = [k for k in missing if not k.startswith(POSTHOC_PREFIX)] + list(unexpected)
    if wrong:
        raise CheckpointError(f"weights {path} do not fit the run's network ({len(wrong)} keys: e.g. {wrong[0]}; "
                              f"allowed: weights written by this run's config)")
    return {"path": str(path), "step": step, "val_loss": score}
