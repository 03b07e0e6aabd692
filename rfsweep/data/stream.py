"""A resumable stream of training samples.

Training position is one integer, the number of samples drawn so far (`global_step * batch_size`).
Sample p of the stream is item `perm_e[p mod N]` of pass `e = p // N`, with `perm_e` a permutation fixed by
(seed, e); so a run resumed at step k reads exactly the batches an uninterrupted run reads, whatever the
data-loader workers or the checkpoint interval. With several processes (DDP), step k's global batch is the same
`batch_size` positions, split into equal contiguous shards by rank: the data a run sees does not depend on how
many devices train it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Dataset, Sampler


class SampleStream(Dataset):
    """Maps a stream position p to (item, pass): the pass lets datasets redraw random captions."""

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed = base, seed
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.base), generator=g), epoch
        return self._perm

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, p: int) -> dict:
        epoch, offset = divmod(int(p), len(self.base))
        i = int(self._permutation(epoch)[offset])
        return self.base.item(i, epoch) if hasattr(self.base, "item") else self.base[i]


class StreamSampler(Sampler):
    """Yields, for steps [start, end), this rank's shard of each global batch of `batch_size` stream positions, in
    `accumulate` micro-batches (gradient accumulation: a step's micro-batches together are the rank's shard).

    `start_step` may be a callable read each time an iterator is made (the trainer's global step): Lightning
    re-creates the iterator on a restart, and the stream must pick up at the step about to run.
    """

    def __init__(self, batch_size: int, start_step: int | Callable[[], int], end_step: int, rank: int = 0,
                 world: int = 1, accumulate: int = 1):
        if batch_size % (world * accumulate) or not 0 <= rank < world:
            raise ValueError(f"batch_size={batch_size} must split evenly over world={world} x "
                             f"accumulate={accumulate} (rank={rank})")
        self.batch_size, self.start_step, self.end_step = batch_size, start_step, end_step
        self.shard, self.rank, self.accumulate = batch_size // world, rank, accumulate

    def _start(self) -> int:
        return self.start_step() if callable(self.start_step) else self.start_step

    def __len__(self) -> int:
        return max(self.end_step - self._start(), 0) * self.accumulate

    def __iter__(self):
        micro = self.shard // self.accumulate
        for step in range(self._start(), self.end_step):
            first = step * self.batch_size + self.rank * self.shard
            for j in range(self.accumulate):
                yield list(range(first + j * micro, first + (j + 1) * micro))
