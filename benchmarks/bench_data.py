"""`make bench-data`: items/s of the pre-encoded training loader for SD3-shaped items (16x32x32 latents; CLIP-L,
CLIP-G and T5-XXL token states of 77 x 768, 1280 and 4096, pooled 768 + 1280; all fp16), through the training path
(the resumable stream, the step sampler, `collate`) with loader worker processes. Goal: at least 1000 items/s with 2
workers, four times the depth-24 step rate of one H200 (about 250 images/s).

    python benchmarks/bench_data.py [--items 8192] [--captions 1024] [--workers 2] [--batch 64] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from rfsweep.data.datamodule import collate
from rfsweep.data.precomputed import PrecomputedDataset, write_encoded
from rfsweep.data.stream import SampleStream, StreamSampler

ENCODERS = ((768, 768), (1280, 1280), (4096, 0))  # (token width, pooled width): CLIP-L, CLIP-G, T5-XXL


def write_folder(root: Path, items: int, captions: int) -> None:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(items, 16, 32, 32, generator=g).half()
    parts = [(torch.randn(captions, 77, w, generator=g).half(), torch.randn(captions, p, generator=g).half())
             for w, p in ENCODERS]
    options = torch.randint(0, captions, (items, 1), generator=g, dtype=torch.int32)
    write_encoded(root, "train", latents, parts, [f"caption {i}" for i in range(captions)], options)


def measure(root: Path, workers: int, batch: int, seconds: float) -> dict:
    ds = PrecomputedDataset(root, "train")
    loader = DataLoader(SampleStream(ds, seed=0), batch_sampler=StreamSampler(batch, 0, 10**9), collate_fn=collate,
                        num_workers=workers, persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    it, n = iter(loader), 0
    for _ in range(3):  # warm-up: workers started, first pages read
        next(it)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        b = next(it)
        n += len(b["caption"])
    elapsed = time.perf_counter() - start
    shape = [tuple(b["latents"].shape[1:]), *[(tuple(t.shape[1:]), tuple(p.shape[1:])) for t, p in b["parts"]]]
    return {"items_per_s": n / elapsed, "items": n, "seconds": elapsed, "workers": workers, "batch": batch,
            "item_shapes": str(shape)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=8192)
    p.add_argument("--captions", type=int, default=1024, help="distinct captions (ImageNet: a few thousand)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--json", help="write the result here")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_folder(Path(tmp), a.items, a.captions)
        written = time.perf_counter() - t0
        res = measure(Path(tmp), a.workers, a.batch, a.seconds)
    res.update(written_in_s=round(written, 1), goal_items_per_s=1000, met=res["items_per_s"] >= 1000)
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
