"""Model size and FLOPs: the parameter count (`parameter_count`, the size axis of the scaling study) and the FLOPs of
an MM-DiT training step, the compute axis of the scaling study (Sec. 5.3) and of MFU.

Training FLOPs per sample = 3 x forward (2 FLOPs per multiply-accumulate forward, 4 backward):
    6 * sum_m(params_m * tokens_m)  +  3 * sum_blocks(4 * Lq * Lk * D)
m runs over the token-wise matmuls (patch embedding and output layer per image token, context embedding per text
token, per-stream QKV, output and MLP per token of that stream); the attention term counts QK^T and AV with
Lk = image + text tokens and Lq = Lk, except the last block whose context stream is pre-only (image queries only:
its context tokens make keys and values only). Per-sample matmuls (modulation, timestep / pooled MLPs) are left
out: they do not grow with the tokens. Two or three weight sets cost the same: each token meets one stream.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rfsweep.backbones.mmdit import MMDiT


def parameter_count(module: nn.Module) -> int:
    """The model size: the number of parameters of `module` (each tensor once, as `module.parameters()` yields them;
    on the meta device too)."""
    return sum(p.numel() for p in module.parameters())


def mmdit_train_flops(depth: int, width: int, channels: int, patch: int, context_dim: int, img_tokens: int,
                      txt_tokens: int, mlp_ratio: float = 4.0, last_context_pre_only: bool = True) -> float:
    """`last_context_pre_only`: SD3's MM-DiT (True); DiT's shared stream runs every token through the last block."""
    d, n_img, n_txt = width, img_tokens, txt_tokens
    stream = (4 + 2 * mlp_ratio) * d * d  # QKV 3 D^2 + output D^2 + MLP 2 r D^2
    n_q = n_img if last_context_pre_only else n_img + n_txt  # the last block's queries
    macs = n_img * (patch * patch * channels * d) * 2 + n_txt * context_dim * d  # patches in + out, context
    macs += (depth - 1) * stream * (n_img + n_txt) + stream * n_q + (n_img + n_txt - n_q) * 2 * d * d  # K, V
    attn = (depth - 1) * 4 * (n_img + n_txt) ** 2 * d + 4 * n_q * (n_img + n_txt) * d
    return float(6 * macs + 3 * attn)


def train_flops_per_sample(net, latent_shape: tuple[int, int, int], txt_tokens: int) -> float | None:
    """`mmdit_train_flops` of an MMDiT (or DiT, its one-weight-set case) for latents (C, H, W) and `txt_tokens`
    context tokens; None for other backbones (the scaling study is of MM-DiT)."""
    if not isinstance(net, MMDiT):
        return None
    c, h, w = latent_shape
    p = net.patch_size
    mlp = net.blocks[0].streams[-1].mlp.fc1
    return mmdit_train_flops(len(net.blocks), net.width, c, p, net.context_embedders[0].in_features,
                             (h // p) * (w // p), txt_tokens, mlp.out_features / net.width,
                             last_context_pre_only=net.blocks[-1].streams[0].pre_only)


def counted_train_flops(net, latent_shape: tuple[int, int, int], txt_tokens: int, context_dim: int,
                        pooled_dim: int) -> float:
    """Training FLOPs per sample of any backbone, counted by torch's FLOP counter over one forward and backward
    pass of a single sample (works on the meta device: nothing is allocated)."""
    device = next(net.parameters()).device
    x = torch.zeros(1, *latent_shape, device=device, requires_grad=False)
    t = torch.full((1,), 0.5, device=device)
    ctx = torch.zeros(1, txt_tokens, context_dim, device=device)
    pooled = torch.zeros(1, pooled_dim, device=device)
    with FlopCounterMode(display=False) as counter:
        net(x, t, ctx, pooled).float().sum().backward()
    return float(counter.get_total_flops())


# Dense bf16 tensor-core peaks (FLOP/s) of the cards rfsweep is measured on, for MFU; None for others.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a CUDA device from its name (e.g. "NVIDIA H100 80GB HBM3"), None if not in PEAK_BF16."""
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)
