"""Atomic checkpoints: written to a temporary file beside the target, fsynced, then renamed over it,
so a kill at any moment leaves either the old checkpoint or the new one, never a truncated file.
Checkpoints hold only tensors and plain containers: they load with `torch.load(weights_only=True)`, always onto the
CPU (memory-mapped): a checkpoint saved from GPU tensors would otherwise come back on the GPU it was saved from, on
every rank at once (GPU 0 under DDP), before Lightning moves each tensor to its own device."""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rfsweep.atomic import atomic_write
from rfsweep.errors import CheckpointError  # noqa: F401 (raised here, defined in the one home of user errors)


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
