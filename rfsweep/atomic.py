"""Atomic writes, the one home of "results are never torn": write to a temporary file beside the target,
fsync it, rename it over the target. A kill at any moment leaves the old file or the new one. Right before the rename
the run folder's write fence is asked (`rfsweep.fence`): a process that lost its run folder writes nothing more there.
`atomic_write` for a file written through a file object, `atomic_save_tensors` for safetensors files written tensor
by tensor."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from rfsweep.fence import check_write


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", fenced: bool = True, **open_kw) -> Iterator[IO]:
    """`with atomic_write(p, "w") as f: f.write(...)`; on an exception the target is left untouched. `fenced=False`
    for the few files that coordinate processes rather than record the run (the ranks' records of `.ranks/`): they
    are written also by a process that lost the run folder, so that its peers learn it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if fenced:
            check_write(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file(tensors, path, metadata)` to a temporary file beside `path` (named for this
    process), fsynced, renamed over it. `save_file` writes tensor by tensor from the tensors' own memory: no second
    copy of the tensors in memory, which writing the bytes of `safetensors.torch.save` through `atomic_write` would
    hold, and which `save_file` itself held before safetensors 0.8 (pyproject.toml pins it; tests/test_atomic.py)."""
    from safetensors.torch import save_file  # deferred: safetensors.torch imports torch; this module stays a leaf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        check_write(path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Sync a folder's entries (a rename into it, a file created in it): only then does the name survive a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Sync every file below `folder`, then every folder, deepest first (a checkpoint written as a folder)."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)
