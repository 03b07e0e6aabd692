"""Pre-encoded data (App. E.1 of the paper): latents and per-encoder text embeddings computed once.

Layout of a folder: `<split>.safetensors` with `latents` (N, C, h, w) and, for each encoder i,
`tokens_i` (N, L_i, D_i) and `pooled_i` (N, P_i) stored in half precision, plus `<split>.captions.txt`
(one caption per line). The evaluation splits (`val`, `test`) also keep their `images` (N, 3, H, W) as uint8:
the reference images of FID and CLIP score and the real-images floor (Sec. 5.1), which latents cannot stand in for.
Items are `{"latents", "parts": [(tokens_i, pooled_i), ...], "caption"}` (plus `"image"` in [-1, 1] where kept);
the conditioner assembles and drops parts exactly as for captions encoded online.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch.utils.data import Dataset

from rfsweep.atomic import atomic_write
from rfsweep.data import DataError

EVAL_SPLITS = ("val", "test")  # splits whose images are kept: evaluation's reference and real-images floor


class PrecomputedDataset(Dataset):
    def __init__(self, root: str | Path, split: str):
        path = Path(root) / f"{split}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"data.path={root}: no {path.name} (allowed: a folder written by rfsweep.data.precompute)")
        try:
            t = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types on truncation
            raise ValueError(f"data.path={root}: {path.name} is corrupt ({e})") from e
        self.latents = t["latents"].float()
        self.images = t.get("images")  # uint8 (N, 3, H, W), evaluation splits only
        n_enc = sum(k.startswith("tokens_") for k in t)
        self.parts = [(t[f"tokens_{i}"], t[f"pooled_{i}"]) for i in range(n_enc)]
        cap = Path(root) / f"{split}.captions.txt"
        self.captions = cap.read_text().splitlines() if cap.is_file() else [""] * len(self.latents)

    def __len__(self) -> int:
        return len(self.latents)

    def item(self, i: int, epoch: int = 0) -> dict:
        out = {"latents": self.latents[i], "caption": self.captions[i],
               "parts": [(tok[i].float(), pool[i].float()) for tok, pool in self.parts]}
        if self.images is not None:
            out["image"] = self.images[i].float() / 127.5 - 1
        return out

    def __getitem__(self, i: int) -> dict:
        return self.item(i)


@torch.no_grad()
def check_reference_images(root: str | Path, splits: tuple[str, ...] = EVAL_SPLITS) -> None:
    """Before any compute: evaluation on pre-encoded data needs the evaluation splits' images (DataError if not)."""
    for split in splits:
        path = Path(root) / f"{split}.safetensors"
        try:
            with safe_open(str(path), "pt") as f:
                keys = set(f.keys())
        except Exception as e:  # missing, truncated, not safetensors
            raise DataError(f"data.path={root}: {path.name} cannot be read ({type(e).__name__}) (allowed: a folder "
                            f"written by rfsweep.data.precompute)") from e
        if "images" not in keys:
            raise DataError(f"data.path={root}: {path.name} holds no reference images, which evaluation needs "
                            f"(allowed: eval=none, or re-encode with rfsweep.data.precompute, which keeps them)")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 [0, 255]."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def precompute(dataset: Dataset, autoencoder, conditioner, root: str | Path, split: str, batch_size: int = 256,
               keep_images: bool | None = None):
    """Encode a raw dataset once and write it atomically in the layout above. `keep_images` (default: the split
    is an evaluation split) also stores the images, as uint8."""
    keep_images = split in EVAL_SPLITS if keep_images is None else keep_images
    lat, parts, caps, images = [], None, [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = torch.stack([it["image"] for it in items])
        lat.append(autoencoder.encode(batch).float())
        if keep_images:
            images.append(to_uint8(batch))
        p = conditioner.encode([it["caption"] for it in items])
        parts = [[*a, b] for a, b in zip(parts, p)] if parts else [[b] for b in p]
        caps += [it["caption"] for it in items]
    tensors = {"latents": torch.cat(lat)}
    if keep_images:
        tensors["images"] = torch.cat(images).contiguous()
    for i, chunks in enumerate(parts):
        tensors[f"tokens_{i}"] = torch.cat([c[0] for c in chunks]).half().contiguous()
        tensors[f"pooled_{i}"] = torch.cat([c[1] for c in chunks]).half().contiguous()
    with atomic_write(Path(root) / f"{split}.safetensors") as f:
        f.write(save(tensors))
    with atomic_write(Path(root) / f"{split}.captions.txt", "w") as f:
        f.write("\n".join(caps) + "\n")
