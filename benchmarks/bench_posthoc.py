"""Cost of post-hoc EMA reconstruction (`rfsweep.train.posthoc_ema.reconstruct_many`): snapshots of two tracked EMAs
of a model of P parameters (float32, 16 tensors), S snapshots; the disk they take and the time to rebuild 1, 4 and 8
lengths in one pass each (seconds per length), with the read rate.
`python benchmarks/bench_posthoc.py [P_MILLIONS] [S]` (default 50 M parameters, 20
snapshots: 8 GB of snapshots)."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rfsweep.train.posthoc_ema import reconstruct_many, write_snapshot  # noqa: E402


def _drop_page_cache() -> bool:
    """Make the rebuild read from the disk, not from the page cache the writes filled (root only)."""
    import os

    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main(millions: float = 50, snapshots: int = 20) -> None:
    per = int(millions * 1e6 / 16)
    folder = Path(tempfile.mkdtemp(prefix="bench-posthoc-"))
    try:
        nets = {s: nn.ParameterList([nn.Parameter(torch.randn(per)) for _ in range(16)]) for s in (0.05, 0.10)}
        t0 = time.perf_counter()
        for k in range(1, snapshots + 1):
            write_snapshot(folder, 1000 * k, nets)
        wrote = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in folder.iterdir())
        print(f"posthoc: {16 * per / 1e6:.0f} M parameters, {snapshots} snapshots x 2 EMAs: {disk / 2**30:.2f} GiB on "
              f"disk (written in {wrote:.1f} s)")
        for n in (1, 4, 8):
            lengths = [round(float(x), 4) for x in torch.linspace(0.05, 0.15, n)] if n > 1 else [0.08]
            cold = _drop_page_cache()
            t0 = time.perf_counter()
            _, infos = reconstruct_many(folder, lengths)
            took = time.perf_counter() - t0
            sums = ", ".join(f"{infos[r]['sum']:.4f}" for r in lengths)
            print(f"  {n} length(s) in one pass: {took:.1f} s, {took / n:.1f} s per length ({disk / took / 2**20:.0f} "
                  f"MiB/s read, {'cold: page cache dropped' if cold else 'page cache (not root)'}); coefficient sums "
                  f"{sums}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main(*(float(a) if i == 0 else int(a) for i, a in enumerate(sys.argv[1:])))
