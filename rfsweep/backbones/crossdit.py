"""CrossDiT (paper Sec. 4, Fig. 4): DiT blocks over image tokens that read the text by cross-attention,
PixArt-alpha style.

Block: x += gate_msa * SelfAttn(adaLN(x)); x += CrossAttn(LN(x), c_ctxt); x += gate_mlp * MLP(adaLN(x)).
adaLN-Zero modulation comes from y = MLP(t) + MLP(c_vec) as in MM-DiT (PixArt's adaLN-single is not used).
Choices the paper leaves open: the text tokens are embedded once by a linear map (no text-side blocks);
the cross-attention has a non-affine LayerNorm on its queries and a zero-initialised output projection,
so every block starts as identity (PixArt zero-inits that projection too).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rfsweep.backbones.layers import (
    QKV,
    ConditionEmbedder,
    CrossAttention,
    FinalLayer,
    Mlp,
    Modulations,
    PatchEmbed,
    attention,
    checkpointed,
    dit_init_,
    layer_norm,
    modulate,
    resolve_size,
    unpatchify,
)


class CrossDiTBlock(nn.Module):
    """x: (N, L, D), context: (N, M, D), mod: (N, 6 D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.qkv = QKV(dim, heads, qk_norm)
        self.proj = nn.Linear(dim, dim)
        self.cross_attn = CrossAttention(dim, heads, qk_norm)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.proj(
            attention(*self.qkv(modulate(layer_norm(x), shift_msa, scale_msa)))
        )
        x = x + self.cross_attn(layer_norm(x), context)
        return x + gate_mlp[:, None] * self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp))


class CrossDiT(nn.Module):
    """net(x, t, context, pooled) -> (N, C, H, W); see `rfsweep.backbones` for the contract."""

    def __init__(
        self,
        in_channels: int,
        context_dim: int,
        pooled_dim: int,
        depth: int,
        width: int | None = None,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
        patch_size: int = 2,
        pos_embed_max_size: int = 96,
        qk_norm: bool = False,
        grad_checkpointing: bool = False,
        pos_embed_base_size: int | None = None,
    ):
        super().__init__()
        width, heads = resolve_size(depth, width, heads)
        self.patch_size, self.grad_checkpointing = patch_size, grad_checkpointing
        self.x_embedder = PatchEmbed(in_channels, width, patch_size, pos_embed_max_size, pos_embed_base_size)
        self.c_embedder = ConditionEmbedder(pooled_dim, width)
        self.context_embedder = nn.Linear(context_dim, width)
        self.blocks = nn.ModuleList(CrossDiTBlock(width, heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.modulations = Modulations(width, [6 * width] * depth)
        self.final_layer = FinalLayer(width, patch_size * patch_size * in_channels)
        dit_init_(self)
        for block in self.blocks:
            nn.init.zeros_(block.cross_attn.proj.weight)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor
    ) -> torch.Tensor:
        p = self.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        img = self.x_embedder(x)  # (N, h * w, D)
        y = self.c_embedder(t, pooled)  # (N, D)
        ctx = self.context_embedder(context)  # (N, M, D)
        for block, mod in zip(self.blocks, self.modulations(y)):
            img = checkpointed(block, img, ctx, mod, enabled=self.grad_checkpointing)
        return unpatchify(self.final_layer(img, y), h, w, p)
