"""Pre-encoded data (App. E.1 of the paper): latents and per-encoder text embeddings computed once.

Layout of a folder: `<split>.safetensors` with `latents` (N, C, h, w) and, for each encoder i,
`tokens_i` (N, L_i, D_i) and `pooled_i` (N, P_i) stored in half precision, plus `<split>.captions.txt`
(one caption per line). Items are `{"latents", "parts": [(tokens_i, pooled_i), ...], "caption"}`;
the conditioner assembles and drops parts exactly as for captions encoded online.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch.utils.data import Dataset

from rfsweep.atomic import atomic_write


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
        n_enc = sum(k.startswith("tokens_") for k in t)
        self.parts = [(t[f"tokens_{i}"], t[f"pooled_{i}"]) for i in range(n_enc)]
        cap = Path(root) / f"{split}.captions.txt"
        self.captions = cap.read_text().splitlines() if cap.is_file() else [""] * len(self.latents)

    def __len__(self) -> int:
        return len(self.latents)

    def item(self, i: int, epoch: int = 0) -> dict:
        return {"latents": self.latents[i], "caption": self.captions[i],
                "parts": [(tok[i].float(), pool[i].float()) for tok, pool in self.parts]}

    def __getitem__(self, i: int) -> dict:
        return self.item(i)


@torch.no_grad()
def precompute(dataset: Dataset, autoencoder, conditioner, root: str | Path, split: str, batch_size: int = 256):
    """Encode a raw dataset once and write it atomically in the layout above."""
    lat, parts, caps = [], None, []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        lat.append(autoencoder.encode(torch.stack([it["image"] for it in items])).float())
        p = conditioner.encode([it["caption"] for it in items])
        parts = [[*a, b] for a, b in zip(parts, p)] if parts else [[b] for b in p]
        caps += [it["caption"] for it in items]
    tensors = {"latents": torch.cat(lat)}
    for i, chunks in enumerate(parts):
        tensors[f"tokens_{i}"] = torch.cat([c[0] for c in chunks]).half().contiguous()
        tensors[f"pooled_{i}"] = torch.cat([c[1] for c in chunks]).half().contiguous()
    with atomic_write(Path(root) / f"{split}.safetensors") as f:
        f.write(save(tensors))
    with atomic_write(Path(root) / f"{split}.captions.txt", "w") as f:
        f.write("\n".join(caps) + "\n")
