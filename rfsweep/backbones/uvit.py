"""U-ViT (Hoogeboom et al. 2023, "simple diffusion"), as the paper compares it (Sec. 4, Fig. 4).

Convolutional ResNet stages go down to a low-resolution grid, transformer blocks run there, and
ResNet stages come back up with skip connections. The paper leaves the details open; ours:
- The U-Net downsamples by `patch_size` (log2(patch_size) stages of stride 2), so the transformer sees
  the same (H/p, W/p) token grid as MM-DiT / DiT and the comparison is at equal token count.
- Channels double per stage and reach `width` at the transformer (width / 2 at full resolution for p=2).
- `depth` transformer blocks, each DiT's (MM-DiT with one weight set, `mmdit.py`): the text tokens join
  the image tokens by concatenation; image tokens get the cropped 2D sin-cos positions.
- `res_blocks` ResNet blocks per stage and direction; one skip per stage (concatenated before the up
  stage's first ResNet block). ResNet blocks are GroupNorm-SiLU-conv3x3 twice, the second norm modulated
  by (shift, scale) from y (ADM's scale-shift norm), the last conv zero-initialised.
- Initialisation: convolutions as ADM (PyTorch's default, the last conv of each block and the output conv zero);
  every linear layer, the transformer blocks and the modulations as DiT (`layers.dit_init_`), as the other
  transformer backbones of Fig. 4.
- All modulations (ResNet and transformer) come from y = MLP(t) + MLP(c_vec) in one matmul.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfsweep.backbones.layers import (
    ConditionEmbedder,
    Modulations,
    centre_crop,
    checkpointed,
    dit_init_,
    resolve_size,
    sincos_2d_table,
)
from rfsweep.backbones.mmdit import MMDiTBlock


def group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    """x: (N, C_in, H, W), mod: (N, 2 C_out) -> (N, C_out, H, W)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.n_mod = 2
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        shift, scale = mod[:, :, None, None].chunk(2, dim=1)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class UViT(nn.Module):
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
        patch_size: int = 2,  # total downsampling of the U-Net (a power of 2)
        pos_embed_max_size: int = 96,
        qk_norm: bool = False,
        grad_checkpointing: bool = False,
        res_blocks: int = 2,
        pos_embed_base_size: int | None = None,
    ):
        super().__init__()
        width, heads = resolve_size(depth, width, heads)
        levels = int(math.log2(patch_size))
        if 2**levels != patch_size or width % 2**levels:
            raise ValueError(f"uvit needs patch_size a power of 2 dividing width, got {patch_size}, {width}")
        self.patch_size, self.grad_checkpointing = patch_size, grad_checkpointing
        chs = [width // 2 ** (levels - i) for i in range(levels + 1)]  # channels per resolution, fine first

        self.c_embedder = ConditionEmbedder(pooled_dim, width)
        self.context_embedder = nn.Linear(context_dim, width)
        self.conv_in = nn.Conv2d(in_channels, chs[0], 3, padding=1)
        self.down = nn.ModuleList(
            nn.ModuleList(ResBlock(chs[i], chs[i]) for _ in range(res_blocks)) for i in range(levels)
        )
        self.downsample = nn.ModuleList(nn.Conv2d(chs[i], chs[i + 1], 3, 2, 1) for i in range(levels))
        self.register_buffer(
            "pos_table", sincos_2d_table(width, pos_embed_max_size, pos_embed_base_size), False
        )
        self.blocks = nn.ModuleList(
            MMDiTBlock(width, heads, mlp_ratio, qk_norm, [False]) for _ in range(depth)
        )
        self.upsample = nn.ModuleList(nn.Conv2d(chs[i + 1], chs[i], 3, padding=1) for i in range(levels))
        self.up = nn.ModuleList(
            nn.ModuleList(ResBlock(2 * chs[i] if j == 0 else chs[i], chs[i]) for j in range(res_blocks))
            for i in range(levels)
        )
        self.norm_out = group_norm(chs[0])
        self.conv_out = nn.Conv2d(chs[0], in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        # one matmul for every modulation, in forward's order: down, transformer, up
        res = [b for stage in self.down for b in stage] + [
            b for i in reversed(range(levels)) for b in self.up[i]
        ]
        sizes = [2 * b.conv2.out_channels for b in res] + [6 * width] * depth
        self.modulations = Modulations(width, sizes)
        self.n_res_mods = len(res)
        dit_init_(self, convolutions=False)  # the transformer part as DiT, MM-DiT; convolutions as ADM

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor
    ) -> torch.Tensor:
        p, ckpt = self.patch_size, self.grad_checkpointing
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by patch_size={p}")
        y = self.c_embedder(t, pooled)  # (N, D)
        mods = self.modulations(y)
        res_mods, block_mods = mods[: self.n_res_mods], mods[self.n_res_mods :]
        k = 0  # next ResNet modulation

        h, skips = self.conv_in(x), []
        for stage, down in zip(self.down, self.downsample):
            for block in stage:
                h, k = checkpointed(block, h, res_mods[k], enabled=ckpt), k + 1
            skips.append(h)
            h = down(h)

        n, _, gh, gw = h.shape  # (N, D, H/p, W/p)
        tokens = h.flatten(2).transpose(1, 2) + centre_crop(self.pos_table, gh, gw).to(h.dtype)
        ctx = self.context_embedder(context)  # (N, M, D)
        xs = [torch.cat([ctx, tokens], dim=1)]
        for block, mod in zip(self.blocks, block_mods):
            xs = checkpointed(block, xs, [mod], enabled=ckpt)
        h = xs[0][:, -gh * gw :].transpose(1, 2).reshape(n, -1, gh, gw)

        for i in reversed(range(len(self.up))):
            h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = torch.cat([h, skips[i]], dim=1)
            for block in self.up[i]:
                h, k = checkpointed(block, h, res_mods[k], enabled=ckpt), k + 1
        return self.conv_out(F.silu(self.norm_out(h)))
