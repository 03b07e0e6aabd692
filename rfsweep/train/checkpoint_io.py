"""Atomic checkpoints: written to a temporary file beside the target, fsynced, then renamed over it,
so a kill at any moment leaves either the old checkpoint or the new one, never a truncated file.
Checkpoints hold only tensors and plain containers: they load with `torch.load(weights_only=True)`."""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rfsweep.atomic import atomic_write


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file."""


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_write(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint(path, map_location)


def load_checkpoint(path, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not an rfsweep checkpoint "
                              f"({type(e).__name__}: {e})") from e
