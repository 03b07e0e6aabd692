"""The paper's EMA (App. B.3): a copy of the weights updated every `every` training batches with `decay`."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(net: nn.Module, meta: bool = False) -> nn.Module:
    """The EMA copy of `net`; `meta`: its structure only (tensors on the meta device), for FSDP, where each rank
    makes its EMA shards from the backbone's once the backbone is sharded (no rank holds a whole second copy)."""
    memo = {}
    if meta:
        for t in (*net.parameters(), *net.buffers()):
            empty = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(net, memo).requires_grad_(False).eval()


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, for parameters and floating buffers. Under FSDP the parameters are
    DTensors sharded alike in both copies (each rank updates its shard), the buffers plain tensors: two updates."""
    for e, n in (([p for p in ema.parameters()], [p for p in net.parameters()]),
                 ([b for b in ema.buffers() if b.is_floating_point()],
                  [b for b in net.buffers() if b.is_floating_point()])):
        if e:
            torch._foreach_lerp_(e, [x.detach().to(y.dtype) for x, y in zip(n, e)], 1.0 - decay)
