"""Autoencoders: images (B, 3, H, W) in [-1, 1] to latents and back, with a global shift and scale.

`latents = (E(x) - shift) * scale` and `x = D(latents / scale + shift)` (Sec. 4: latents normalised by a
global shift and scale). `IdentityAutoencoder` serves pixel-space data (the embedded default);
`DiffusersVAE` loads a diffusers `AutoencoderKL` from a hub name (e.g. SD3's, shift 0.0609 and scale
1.5305, 16 channels) or builds one with random weights from a config dict (tests).
"""

from __future__ import annotations

import torch
from torch import nn

from rfsweep.text_encoders import from_local


class IdentityAutoencoder(nn.Module):
    downsample = 1

    def __init__(self, channels: int = 3, shift: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.latent_channels, self.shift, self.scale = channels, shift, scale

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scale + self.shift


class DiffusersVAE(nn.Module):
    def __init__(self, name: str | None = None, subfolder: str | None = None, config: dict | None = None,
                 shift: float = 0.0, scale: float = 1.0, sample: bool = False):
        super().__init__()
        from diffusers import AutoencoderKL  # deferred: diffusers (seconds), only the diffusers autoencoders

        if config is not None:
            vae = AutoencoderKL(**config)
        else:
            vae = from_local(AutoencoderKL.from_pretrained, name, "autoencoder.name", "autoencoder=identity",
                             subfolder=subfolder)
        self.vae = vae.eval().requires_grad_(False)
        self.latent_channels = vae.config.latent_channels
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        self.shift, self.scale, self.sample = shift, scale, sample

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(x).latent_dist
        z = dist.sample() if self.sample else dist.mode()
        return (z - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scale + self.shift).sample.clamp(-1, 1)
