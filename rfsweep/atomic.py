"""Atomic writes, the one home of "results are never torn": write to a temporary file beside the target,
fsync it, rename it over the target. A kill at any moment leaves the old file or the new one. `atomic_write` for a
file written through a file object, `atomic_save_tensors` for safetensors files written tensor by tensor."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kw) -> Iterator[IO]:
    """`with atomic_write(p, "w") as f: f.write(...)`; on an exception the target is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file(tensors, path, metadata)` to a temporary file beside `path` (named for this
    process), fsynced, renamed over it. `save_file` writes tensor by tensor: no second copy of the tensors in memory,
    which writing the bytes of `safetensors.torch.save` through `atomic_write` would hold."""
    from safetensors.torch import save_file  # deferred: safetensors.torch imports torch; this module stays a leaf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
