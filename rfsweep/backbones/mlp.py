"""The demo denoiser: a small pixel-space MLP over the flattened image (~0.7M parameters at 8x8x3).

Fast enough for CPU smoke tests and toy studies; same contract as the transformers. Conditioning is
y = MLP(t) + MLP(c_vec) + Linear(mean of c_ctxt over tokens), fed to residual MLP blocks by adaLN-Zero.
It accepts the shared constructor arguments; heads, patch_size, pos_embed_max_size and qk_norm have no
meaning here and are ignored. The image size is fixed at construction (`input_size`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rfsweep.backbones.layers import (
    ConditionEmbedder,
    Mlp,
    Modulations,
    checkpointed,
    layer_norm,
    modulate,
)


class ResidualMlp(nn.Module):
    """h: (N, D), mod: (N, 3 D) -> h + gate * MLP(adaLN(h))."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, h: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = mod.chunk(3, dim=1)
        return h + gate * self.mlp(modulate(layer_norm(h[:, None]), shift, scale)[:, 0])


class MLPDenoiser(nn.Module):
    """net(x, t, context, pooled) -> (N, C, H, W) for x of the fixed size (N, C, *input_size)."""

    def __init__(
        self,
        in_channels: int,
        context_dim: int,
        pooled_dim: int,
        depth: int = 2,
        width: int | None = 176,  # the 64 * depth size rule is for transformers; None -> 64 * depth
        heads: int | None = None,
        mlp_ratio: float = 2.0,
        patch_size: int = 2,
        pos_embed_max_size: int = 96,
        qk_norm: bool = False,
        grad_checkpointing: bool = False,
        input_size: int | tuple[int, int] = 8,
        skip: bool = False,
    ):
        super().__init__()
        del heads, patch_size, pos_embed_max_size, qk_norm  # no meaning for an MLP
        width = 64 * depth if width is None else width
        self.shape = (in_channels, *((input_size,) * 2 if isinstance(input_size, int) else input_size))
        n_in = in_channels * self.shape[1] * self.shape[2]
        self.grad_checkpointing = grad_checkpointing
        self.c_embedder = ConditionEmbedder(pooled_dim, width)
        self.context_embedder = nn.Linear(context_dim, width)
        self.proj_in = nn.Linear(n_in, width)
        self.blocks = nn.ModuleList(ResidualMlp(width, mlp_ratio) for _ in range(depth))
        self.modulations = Modulations(width, [3 * width] * depth + [2 * width])
        self.proj_out = nn.Linear(width, n_in)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        # skip: the output gets c(t, c_vec) x, a scalar per sample times the input, so the network can pass its
        # input through (noise and velocity prediction copy much of it) without squeezing it through `width`
        self.skip = nn.Linear(width, 1) if skip else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor
    ) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"mlp backbone was built for inputs (N, *{self.shape}), got {tuple(x.shape)}")
        y = self.c_embedder(t, pooled) + self.context_embedder(context.mean(dim=1))  # (N, D)
        *mods, final = self.modulations(y)
        h = self.proj_in(x.flatten(1)) + y
        for block, mod in zip(self.blocks, mods):
            h = checkpointed(block, h, mod, enabled=self.grad_checkpointing)
        shift, scale = final.chunk(2, dim=1)
        h = modulate(layer_norm(h[:, None]), shift, scale)[:, 0]
        out = self.proj_out(h).view(x.shape)
        if self.skip is not None:
            out = out + self.skip(y).view(-1, *([1] * (x.ndim - 1))) * x
        return out
