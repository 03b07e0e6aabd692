"""The LightningDataModule: a resumable training stream and a fixed validation set, split over the ranks."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

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


class ValShard(Dataset):
    """Rank `rank`'s share of a validation set cut into batches of `batch` samples: its i-th item is the set's batch
    b = i x world + rank, collated, with "val_batch": b (which fixes the batch's noise, as on one process) and
    "val_weight": 1. Every rank has ceil(batches / world) items: a rank past the last batch gets a copy of rank 0's
    batch i x world with "val_weight": 0 (counted nowhere), because every rank must run as many validation steps (under
    FSDP each forward is a collective). The weighted mean over every rank's batches is then the one-process mean: the
    module logs each batch's mean loss with batch size samples x weight, and Lightning's mean over ranks sums the
    ranks' weighted sums and their sample counts (`DiffusionModule.validation_step`)."""

    def __init__(self, base: Dataset, batch: int, rank: int = 0, world: int = 1):
        self.base, self.batch, self.rank, self.world = base, int(batch), int(rank), int(world)
        self.batches = math.ceil(len(base) / self.batch)

    def __len__(self) -> int:
        return math.ceil(self.batches / self.world)

    def __getitem__(self, i: int) -> dict:
        b = i * self.world + self.rank
        weight = int(b < self.batches)
        b = b if weight else i * self.world
        items = [self.base[j] for j in range(b * self.batch, min((b + 1) * self.batch, len(self.base)))]
        return {**collate(items), "val_batch": b, "val_weight": weight}


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
        # Each rank validates its share of the set's batches (ValShard), each batch with its own fixed noise: the
        # logged losses are the one-device ones, up to the summation order, whatever the number of devices.
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        val = Subset(self.val, range(min(self.n_val, len(self.val))))
        return DataLoader(ValShard(val, min(self.batch_size, 256), rank, world), batch_size=None, num_workers=0)
