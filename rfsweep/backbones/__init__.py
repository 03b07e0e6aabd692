"""Backbones: the denoising networks of the architecture study (paper Sec. 4, Fig. 4).

The contract every backbone keeps, and the only thing the training loop and the formulations know of it:

    net(x, t, context, pooled) -> tensor shaped like x

    x:       (N, C, H, W) latents (or pixels), H and W divisible by the patch size (non-square allowed)
    t:       (N,) rectified-flow time in [0, 1]: t = 0 data, t = 1 noise (`rfsweep.types`);
             diffusers' / SD3's `timestep` argument is 1000 t
    context: (N, L, D_ctx) text token states (c_ctxt)
    pooled:  (N, D_vec) pooled text vector (c_vec)

A backbone knows nothing of formulations: what its output means (velocity, noise, data) is the
formulation's business. Shared constructor arguments: in_channels, context_dim, pooled_dim, depth,
width (default 64 depth), heads (default depth), mlp_ratio=4, patch_size=2, pos_embed_max_size=96,
qk_norm=False, grad_checkpointing=False; mmdit adds weight_sets (2 or 3) and clip_tokens.
"""

from __future__ import annotations

import torch.nn as nn

from rfsweep.backbones.crossdit import CrossDiT
from rfsweep.backbones.dit import DiT
from rfsweep.backbones.mlp import MLPDenoiser
from rfsweep.backbones.mmdit import MMDiT, from_diffusers
from rfsweep.backbones.uvit import UViT
from rfsweep.types import Backbone

BACKBONES: dict[str, type[nn.Module]] = {
    "mmdit": MMDiT,
    "dit": DiT,
    "crossdit": CrossDiT,
    "uvit": UViT,
    "mlp": MLPDenoiser,
}


def build_backbone(name: str, **kwargs) -> Backbone:
    """BACKBONES[name](**kwargs); e.g. build_backbone("mmdit", in_channels=4, context_dim=4096,
    pooled_dim=2048, depth=24)."""
    if name not in BACKBONES:
        raise ValueError(f"backbone name={name!r} is not one of {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)


__all__ = ["BACKBONES", "Backbone", "build_backbone", "MMDiT", "DiT", "CrossDiT", "UViT", "MLPDenoiser",
           "from_diffusers"]
