"""The LightningDataModule: a resumable training stream and a fixed validation set."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from rfsweep.data import build_dataset
from rfsweep.data.stream import SampleStream, StreamSampler


def collate(items: list[dict]) -> dict:
    out: dict = {"caption": [it["caption"] for it in items]}
    if "latents" in items[0]:
        out["latents"] = torch.stack([it["latents"] for it in items])
        out["parts"] = [(torch.stack([it["parts"][i][0] for it in items]),
                         torch.stack([it["parts"][i][1] for it in items])) for i in range(len(items[0]["parts"]))]
    else:
        out["image"] = torch.stack([it["image"] for it in items])
    return out


class DataModule(L.LightningDataModule):
    def __init__(self, *, name: str, batch_size: int, max_steps: int, resolution: int = 8, seed: int = 0,
                 path: str | None = None, n_val: int = 256, num_workers: int = 0, data_seed: int = 0,
                 accumulate: int = 1, expect: dict | None = None):
        """`seed` orders the training stream; `data_seed` fixes the data set itself (splits, scenes, captions),
        so runs with different seeds train and are evaluated on the same data."""
        super().__init__()
        self.name, self.batch_size, self.max_steps = name, batch_size, max_steps
        self.resolution, self.seed, self.path, self.n_val, self.num_workers = resolution, seed, path, n_val, num_workers
        self.accumulate = accumulate
        self.train = build_dataset(name, "train", resolution, data_seed, path, expect)
        self.val = build_dataset(name, "val", resolution, data_seed, path, expect)

    def train_dataloader(self) -> DataLoader:
        # The stream starts where the (possibly restored) trainer stands: data position = global step.
        # With several processes each reads its rank's shard of the global batch (`batch_size` is global).
        trainer = self.trainer
        start = (lambda: trainer.global_step) if trainer is not None else 0
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return DataLoader(SampleStream(self.train, self.seed),
                          batch_sampler=StreamSampler(self.batch_size, start, self.max_steps, rank, world,
                                                      self.accumulate),
                          collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        # Every rank validates on the whole set (same batches, same fixed noise): the validation loss is the
        # single-device one exactly, whatever the number of devices (validation is a few % of training time).
        val = Subset(self.val, range(min(self.n_val, len(self.val))))
        return DataLoader(val, batch_size=min(self.batch_size, 256), shuffle=False, collate_fn=collate,
                          num_workers=0)
