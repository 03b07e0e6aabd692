"""Validation split over the ranks: each rank validates its share of the set's batches (`ValShard`), and the logged
losses are the one-process ones (the same noise per batch, Lightning's mean over ranks weighted by the samples each
rank counted), the same number on every rank: `val/loss_ema` chooses best.safetensors, and under FSDP every rank must
take the same decision."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from rfsweep.data.datamodule import ValShard
from tests.helpers import compose_cfg, rendezvous_port, tiny


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int) -> dict:
        return {"image": torch.full((1,), float(j)), "caption": str(j)}


@pytest.mark.parametrize("n,batch,world", [(24, 8, 2), (20, 8, 3), (5, 8, 4), (16, 8, 1), (17, 4, 2)])
def test_the_ranks_shards_partition_the_set_in_its_batches(n, batch, world):
    shards = [ValShard(_Items(n), batch, rank, world) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank runs as many validation steps
    counted = []
    for s in shards:
        for item in (s[i] for i in range(len(s))):
            samples = [int(x) for x in item["image"].flatten()]
            b = item["val_batch"]
            assert samples == list(range(b * batch, min((b + 1) * batch, n)))  # the one-process batch b, whole
            counted += samples * item["val_weight"]
    assert sorted(counted) == list(range(n))  # each sample counted once, over all ranks


def _overrides(root) -> list[str]:
    return [*tiny(root), "trainer.n_val=24", "trainer.batch_size=8"]  # three batches: rank 1 gets one and a pad


def _validate(root, world: int) -> dict:
    import lightning as L

    from rfsweep.run.builders import build_module

    module, data = build_module(compose_cfg(_overrides(root)))
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        use_distributed_sampler=False)
    trainer.validate(module, datamodule=data, verbose=False)
    return {"steps": trainer.num_val_batches[0], **{k: float(v) for k, v in trainer.callback_metrics.items()}}


def _rank(rank: int, root: str, port: int) -> None:
    """One of two ranks started from outside Lightning (LOCAL_RANK set), as SLURM's tasks start them."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    metrics = _validate(root, 2)
    with open(os.path.join(root, f"rank{rank}.json"), "w") as f:
        json.dump(metrics, f)


def test_two_ranks_log_the_validation_loss_of_one(tmp_path):
    one = _validate(tmp_path, 1)
    mp.start_processes(_rank, args=(str(tmp_path), rendezvous_port()), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert one.pop("steps") == 3 and [r.pop("steps") for r in ranks] == [2, 2]  # batches 0, 2 | 1 and a pad
    assert ranks[0] == ranks[1]  # bit for bit: every rank takes the same decision on the best weights
    assert one.keys() == ranks[0].keys() and "val/loss_ema" in one and len(one) == 20
    for k, v in one.items():
        assert ranks[0][k] == pytest.approx(v, rel=1e-6, abs=1e-9), k  # the one-process value, up to summation order
