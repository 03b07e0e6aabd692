"""Layers every backbone shares, written once (paper Sec. 4; DiT's `models.py` for the adaLN-Zero parts).

Shapes: N batch, L tokens, D width, H heads, Dh = D / H head width, p patch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-6  # LayerNorm / RMSNorm epsilon (as SD3)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x: (N, L, D), shift, scale: (N, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters: adaLN supplies scale and shift."""
    return F.layer_norm(x, x.shape[-1:], eps=EPS)


# --------------------------------------------------------------------------------------------------------
# Conditioning: y = MLP(sinusoidal(t)) + MLP(c_vec)  (Sec. 4)
# --------------------------------------------------------------------------------------------------------


def timestep_frequencies(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of 1000 t, cos first (SD3's convention). t: (N,) in [0, 1] -> (N, dim) fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))


class ConditionEmbedder(nn.Module):
    """y = MLP(sinusoidal(t)) + MLP(c_vec): t: (N,), pooled: (N, D_vec) -> y: (N, D)."""

    def __init__(self, pooled_dim: int, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.t_embedder = MLPEmbedder(freq_dim, dim)
        self.y_embedder = MLPEmbedder(pooled_dim, dim)

    def forward(self, t: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        t_freq = timestep_frequencies(t, self.freq_dim).to(pooled.dtype)
        return self.t_embedder(t_freq) + self.y_embedder(pooled)


class Modulations(nn.Module):
    """All adaLN modulation vectors of a network from one matmul.

    y is the same for every block, so SiLU -> Linear of all blocks is one (D, sum(sizes)) product instead
    of one small product per block and stream. Zero-initialised (adaLN-Zero): every block starts as identity.
    y: (N, D) -> list of (N, size) in the order of `sizes`.
    """

    def __init__(self, dim: int, sizes: list[int]):
        super().__init__()
        self.sizes = list(sizes)
        self.linear = nn.Linear(dim, sum(sizes))
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, y: torch.Tensor) -> list[torch.Tensor]:
        return list(self.linear(F.silu(y)).split(self.sizes, dim=1))


# --------------------------------------------------------------------------------------------------------
# Patches and positions
# --------------------------------------------------------------------------------------------------------


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos: (M,) -> (M, dim): [sin(pos w), cos(pos w)], w = 10000^(-k / (dim/2)); float64 like MAE/diffusers."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double()[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d_table(dim: int, grid: int, base_size: int | None = None) -> torch.Tensor:
    """Fixed 2D sin-cos positions of a (grid, grid) table -> (grid, grid, dim) fp32.

    First half of the channels encodes the column, second half the row (the MAE / diffusers layout).
    Positions are arange(grid) * base_size / grid: base_size=None gives unit spacing; diffusers' SD3 uses
    base_size = sample_size / patch_size (64 for SD3's 128 latents, 96 max grid).
    """
    if dim % 4:
        raise ValueError(f"width must be divisible by 4 for 2D sin-cos positions, got {dim}")
    pos = torch.arange(grid, dtype=torch.float32) / (grid / (base_size or grid))
    col = sincos_1d(dim // 2, pos)[None, :, :].expand(grid, grid, -1)  # (row, col, dim/2)
    row = sincos_1d(dim // 2, pos)[:, None, :].expand(grid, grid, -1)
    return torch.cat([col, row], dim=-1).float()


def centre_crop(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """table: (M, M, D) -> (h * w, D), the centre crop for an (h, w) token grid (Sec. 5.3)."""
    m = table.shape[0]
    if h > m or w > m:
        raise ValueError(f"token grid {h}x{w} exceeds pos_embed_max_size={m}")
    top, left = (m - h) // 2, (m - w) // 2
    return table[top : top + h, left : left + w].reshape(h * w, -1)


class PatchEmbed(nn.Module):
    """p x p patches -> tokens, plus the centre crop of a fixed (max, max) sin-cos table (Sec. 5.3).

    x: (N, C, H, W) -> (N, H/p * W/p, D), row-major over the (H/p, W/p) grid.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int, max_size: int, base_size: int | None):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_table", sincos_2d_table(dim, max_size, base_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by patch_size={p}")
        h, w = x.shape[-2] // p, x.shape[-1] // p
        return self.proj(x).flatten(2).transpose(1, 2) + centre_crop(self.pos_table, h, w).to(x.dtype)


def unpatchify(x: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """x: (N, h * w, p * p * C), channels ordered (p, q, C) -> (N, C, h p, w p)."""
    n, c = x.shape[0], x.shape[-1] // (p * p)
    x = x.reshape(n, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, c, h * p, w * p)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) -> Linear to p * p * C, zero-initialised. x: (N, L, D), y: (N, D)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.adaLN_modulation = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)
        for m in (self.adaLN_modulation, self.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(F.silu(y)).chunk(2, dim=1)
        return self.linear(modulate(layer_norm(x), shift, scale))


# --------------------------------------------------------------------------------------------------------
# Attention and MLP
# --------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm with learnable scale over the last dim: the optional Q / K norm (Sec. 4, bf16 stability)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), EPS)


def split_heads(x: torch.Tensor, n: int, heads: int) -> tuple[torch.Tensor, ...]:
    """Fused projection x: (N, L, n * D) -> n tensors (N, L, H, Dh), views (no copy)."""
    b, l, _ = x.shape
    return x.view(b, l, n, heads, -1).unbind(2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: (N, Lq, H, Dh), k, v: (N, Lk, H, Dh) -> (N, Lq, H * Dh).

    SDPA reads the (N, L, H, Dh) layout through transposed views, so no copy is made on the way in or out
    on the flash / memory-efficient kernels.
    """
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


class QKV(nn.Module):
    """Fused Q, K, V projection with optional RMSNorm on Q and K.

    x: (N, L, D) -> q, k, v: (N, L, H, Dh); with queries=False only k, v are made (q is None).
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, queries: bool = True):
        super().__init__()
        self.heads, self.n = heads, 3 if queries else 2
        self.linear = nn.Linear(dim, self.n * dim)
        self.q_norm = RMSNorm(dim // heads) if qk_norm and queries else nn.Identity()
        self.k_norm = RMSNorm(dim // heads) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor):
        qkv = split_heads(self.linear(x), self.n, self.heads)
        q, (k, v) = (None, qkv) if self.n == 2 else (self.q_norm(qkv[0]), qkv[1:])
        return q, self.k_norm(k), v


class CrossAttention(nn.Module):
    """x attends to context (PixArt-alpha). x: (N, L, D), context: (N, M, D) -> (N, L, D)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.q_norm = RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.kv = QKV(dim, heads, qk_norm, queries=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        (q,) = split_heads(self.q(x), 1, self.heads)
        _, k, v = self.kv(context)
        return self.proj(attention(self.q_norm(q), k, v))


class Mlp(nn.Module):
    """Linear -> GELU (tanh) -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


# --------------------------------------------------------------------------------------------------------
# Shared constructor arguments
# --------------------------------------------------------------------------------------------------------


def resolve_size(depth: int, width: int | None, heads: int | None) -> tuple[int, int]:
    """Size rule (Sec. 4): depth d -> width 64 d, d heads. Returns (width, heads), validated."""
    width = 64 * depth if width is None else width
    heads = depth if heads is None else heads
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if heads < 1 or width % heads:
        raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
    return width, heads


def checkpointed(fn, *args, enabled: bool):
    """Per-block activation checkpointing, only while gradients are needed."""
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def dit_init_(model: nn.Module, convolutions: bool = True) -> None:
    """DiT's initialisation, shared by every transformer backbone (DiT, CrossDiT, MM-DiT and U-ViT's transformer):
    Xavier-uniform linears and patch projection, N(0, 0.02) timestep MLP, zero modulations and output layer
    (adaLN-Zero: the network starts as the zero function). `convolutions=False` leaves convolutions as they are
    (U-ViT's ResNet stages keep ADM's initialisation)."""
    kinds = (nn.Linear, nn.Conv2d) if convolutions else (nn.Linear,)
    for m in model.modules():
        if isinstance(m, kinds):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, ConditionEmbedder):
            nn.init.normal_(m.t_embedder.fc1.weight, std=0.02)
            nn.init.normal_(m.t_embedder.fc2.weight, std=0.02)
        if isinstance(m, (Modulations, FinalLayer)):
            for p in m.parameters():
                nn.init.zeros_(p)
