"""The best weights under FSDP (two CPU processes over gloo): `BestWeights.save` gathers the raw and EMA weights one
tensor at a time and never the post-hoc EMAs, which best.safetensors leaves out (an all-gather of every post-hoc EMA
to rank 0's CPU, dropped after, was 4 bytes per parameter per EMA of host memory for nothing); the file holds what
torch's own full state dict holds for those keys."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.multiprocessing as mp
from torch import nn

WORLD = 2


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
        self.out = nn.Linear(8, 4)
        self.register_buffer("scale", torch.arange(4.0))


class _Module(nn.Module):
    """The layout of `DiffusionModule`'s state dict: net., ema_net., phema.<i>."""

    def __init__(self):
        super().__init__()
        from rfsweep.train.ema import make_ema

        self.net = _Net()
        self.ema_net = make_ema(self.net)
        self.phema = nn.ModuleList([make_ema(self.net) for _ in range(2)])


def _gather_on_rank(rank: int, folder: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from rfsweep.train import callbacks

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        module = _Module()
        with torch.no_grad():  # every copy its own values, so a mix-up shows
            for i, copy in enumerate((module.ema_net, *module.phema)):
                for p in copy.parameters():
                    p.add_(i + 1)
        mesh = init_device_mesh("cpu", (WORLD,))
        for net in (module.net, module.ema_net, *module.phema):
            for block in net.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(net, mesh=mesh)
        posthoc = {p.to_local().data_ptr() for p in module.phema.parameters()}
        reference = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

        gathered, redistribute = [], DTensor.redistribute

        def spy(self, *a, **k):  # every gather of a DTensor (full_tensor, torch's full state dict) goes through here
            gathered.append(self.to_local().data_ptr())
            return redistribute(self, *a, **k)

        DTensor.redistribute = spy
        callbacks.sharded = lambda trainer: True
        best = callbacks.BestWeights(Path(folder) / "best.safetensors")
        best.best_step, best.best_score = 5, 0.25
        best.save(SimpleNamespace(is_global_zero=rank == 0), module)
        DTensor.redistribute = redistribute
        dist.barrier()
        if rank == 0:
            from safetensors.torch import load_file

            written = load_file(Path(folder) / "best.safetensors")
            want = {k: v for k, v in reference.items() if not k.startswith(callbacks.POSTHOC_PREFIX)}
            dtensors = sum(isinstance(v, DTensor) for k, v in module.state_dict().items() if k in want)
            (Path(folder) / "result.json").write_text(json.dumps({
                "posthoc_gathered": len(posthoc & set(gathered)), "gathers": len(gathered), "dtensors": dtensors,
                "keys": list(written), "want": list(want),
                "equal": all(torch.equal(written[k], want[k]) for k in want)}))
    finally:
        dist.destroy_process_group()


def test_fsdp_best_weights_never_gather_the_posthoc_emas(tmp_path):
    mp.start_processes(_gather_on_rank, args=(str(tmp_path),), nprocs=WORLD, start_method="spawn")
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["posthoc_gathered"] == 0  # not one post-hoc EMA tensor all-gathered
    assert r["gathers"] == r["dtensors"] > 0  # each wanted sharded tensor gathered once
    assert sorted(r["keys"]) == sorted(r["want"]) and r["equal"]  # best.safetensors as before: torch's full tensors
    assert any(k.startswith("net.") for k in r["keys"]) and any(k.startswith("ema_net.") for k in r["keys"])
