"""Timestep densities pi(t) for rectified flow (Sec. 3.1). Each draws (n,) times t in [0, 1]."""

from __future__ import annotations

import math

import torch


def _rand(n, generator, device, dtype):
    return torch.rand(n, generator=generator, device=device, dtype=dtype)


def uniform(n, *, generator=None, device=None, dtype=None):
    """t ~ U(0, 1)."""
    return _rand(n, generator, device, dtype)


def lognorm(n, m: float, s: float, *, generator=None, device=None, dtype=None):
    # Sec. 3.1, logit-normal: t = sigmoid(m + s n), n ~ N(0, 1)
    return torch.sigmoid(m + s * torch.randn(n, generator=generator, device=device, dtype=dtype))


def mode(n, s: float, *, generator=None, device=None, dtype=None):
    # Sec. 3.1, mode with heavy tails: t = 1 - u - s (cos^2(pi u / 2) - 1 + u), u ~ U(0, 1)
    u = _rand(n, generator, device, dtype)
    return 1 - u - s * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)


def cosmap(n, *, generator=None, device=None, dtype=None):
    # Sec. 3.1, CosMap: t = 1 - 1 / (tan(pi u / 2) + 1), u ~ U(0, 1)
    u = _rand(n, generator, device, dtype)
    return 1 - 1 / (torch.tan(math.pi * u / 2) + 1)


DENSITIES = {"uniform": uniform, "lognorm": lognorm, "mode": mode, "cosmap": cosmap}
