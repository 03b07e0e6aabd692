"""Pre-encoded data (App. E.1 of the paper): latents and per-encoder text embeddings computed once.

Layout of a folder: shards `<split>-<k:05d>.safetensors` of up to `SHARD_SIZE` items, each with `latents`
(n, C, h, w) and, for each encoder i, `tokens_i` (n, L_i, D_i) and `pooled_i` (n, P_i) stored in half precision;
plus `<split>.captions.txt` (one caption per line, all shards in order; written last, it marks the split
complete: a split whose shards and captions disagree, e.g. after an interrupted precompute, is refused). The
evaluation splits (`val`, `test`) also keep their `images` (n, 3, H, W) as uint8: the reference images of FID and
CLIP score and the real-images floor (Sec. 5.1), which latents cannot stand in for. A single `<split>.safetensors`
(the first layout) is read too.

Shards are written as they fill (memory stays one shard) and read item by item through memory maps (a split
larger than memory trains), so the format holds ImageNet or CC12M at SD3's ~1 MB per item.
Items are `{"latents", "parts": [(tokens_i, pooled_i), ...], "caption"}` (plus `"image"` in [-1, 1] where kept);
the conditioner assembles and drops parts exactly as for captions encoded online.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch.utils.data import Dataset

from rfsweep.atomic import atomic_write
from rfsweep.data import DataError

EVAL_SPLITS = ("val", "test")  # splits whose images are kept: evaluation's reference and real-images floor
SHARD_SIZE = 4096  # items per shard (~4 GB with SD3's three encoders)
ALLOWED = "a folder written by rfsweep.data.precompute"


def shard_paths(root: str | Path, split: str) -> list[Path]:
    root = Path(root)
    return sorted(root.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9].safetensors")) or (
        [root / f"{split}.safetensors"] if (root / f"{split}.safetensors").is_file() else [])


def _keys_and_length(path: Path, root) -> tuple[set[str], int]:
    try:
        with safe_open(str(path), "pt") as f:
            return set(f.keys()), f.get_slice("latents").get_shape()[0]
    except Exception as e:  # missing, truncated, not safetensors (safetensors raises its own error types)
        raise DataError(f"data.path={root}: {path.name} is corrupt or unreadable ({type(e).__name__}) "
                        f"(allowed: {ALLOWED})") from e


class PrecomputedDataset(Dataset):
    def __init__(self, root: str | Path, split: str):
        self.root, self.paths = Path(root), shard_paths(root, split)
        if not self.paths:
            raise DataError(f"data.path={root}: no {split} shards (allowed: {ALLOWED})")
        info = [_keys_and_length(p, root) for p in self.paths]
        self.keys = info[0][0]
        self.starts = [0]
        for _, n in info:
            self.starts.append(self.starts[-1] + n)
        self.n_enc = sum(k.startswith("tokens_") for k in self.keys)
        cap = self.root / f"{split}.captions.txt"  # written last: it marks the split complete
        self.captions = cap.read_text().splitlines() if cap.is_file() else []
        if len(self.captions) != len(self):
            raise DataError(f"data.path={root}: the {split} split is incomplete ({len(self)} items in its shards, "
                            f"{len(self.captions)} captions) (allowed: {ALLOWED} that ran to the end)")
        self._open: dict[int, object] = {}  # shard -> safe_open handle, per process (handles do not pickle)

    @property
    def has_images(self) -> bool:
        return "images" in self.keys

    def __len__(self) -> int:
        return self.starts[-1]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def _shard(self, k: int):
        if k not in self._open:
            self._open[k] = safe_open(str(self.paths[k]), "pt")
        return self._open[k]

    def item(self, i: int, epoch: int = 0) -> dict:
        k = bisect.bisect_right(self.starts, i) - 1
        f, j = self._shard(k), i - self.starts[k]

        def get(key: str) -> torch.Tensor:
            return f.get_slice(key)[j : j + 1][0]

        out = {"latents": get("latents").float(), "caption": self.captions[i],
               "parts": [(get(f"tokens_{e}").float(), get(f"pooled_{e}").float()) for e in range(self.n_enc)]}
        if self.has_images:
            out["image"] = get("images").float() / 127.5 - 1
        return out

    def __getitem__(self, i: int) -> dict:
        return self.item(i)


def check_reference_images(root: str | Path, splits: tuple[str, ...] = EVAL_SPLITS) -> None:
    """Before any compute: evaluation on pre-encoded data needs the evaluation splits' images (DataError if not)."""
    for split in splits:
        if not PrecomputedDataset(root, split).has_images:
            raise DataError(f"data.path={root}: the {split} shards hold no reference images, which evaluation needs "
                            f"(allowed: eval=none, or re-encode with rfsweep.data.precompute, which keeps them)")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 [0, 255]."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class _ShardWriter:
    """Collects encoded batches and writes a shard atomically each time `size` items are ready."""

    def __init__(self, root: Path, split: str, size: int):
        self.root, self.split, self.size, self.k = root, split, size, 0
        self.pending: dict[str, list[torch.Tensor]] = {}
        (root / f"{split}.captions.txt").unlink(missing_ok=True)  # until rewritten at the end: incomplete
        for old in shard_paths(root, split):  # a rerun replaces the split whole
            old.unlink()

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, t in tensors.items():
            self.pending.setdefault(key, []).append(t)
        while self.pending and sum(len(t) for t in self.pending["latents"]) >= self.size:
            self._write(self.size)

    def _write(self, n: int) -> None:
        joined = {key: torch.cat(ts) for key, ts in self.pending.items()}
        with atomic_write(self.root / f"{self.split}-{self.k:05d}.safetensors") as f:
            f.write(save({key: t[:n].contiguous() for key, t in joined.items()}))
        self.pending = {key: [t[n:]] for key, t in joined.items() if len(t) > n}
        self.k += 1

    def close(self) -> None:
        if self.pending:
            self._write(len(torch.cat(self.pending["latents"])))


@torch.no_grad()
def precompute(dataset: Dataset, autoencoder, conditioner, root: str | Path, split: str, batch_size: int = 256,
               keep_images: bool | None = None, shard_size: int = SHARD_SIZE):
    """Encode a raw dataset once and write it in the layout above, shard by shard. `keep_images` (default: the
    split is an evaluation split) also stores the images, as uint8."""
    keep_images = split in EVAL_SPLITS if keep_images is None else keep_images
    writer, caps = _ShardWriter(Path(root), split, shard_size), []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = torch.stack([it["image"] for it in items])
        tensors = {"latents": autoencoder.encode(batch).float()}
        if keep_images:
            tensors["images"] = to_uint8(batch)
        for e, (tok, pool) in enumerate(conditioner.encode([it["caption"] for it in items])):
            tensors[f"tokens_{e}"], tensors[f"pooled_{e}"] = tok.half(), pool.half()
        writer.add(tensors)
        caps += [" ".join(it["caption"].split()) for it in items]  # one line each
    writer.close()
    with atomic_write(Path(root) / f"{split}.captions.txt", "w") as f:
        f.write("\n".join(caps) + "\n")
