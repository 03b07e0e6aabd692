"""Rectified flow (Sec. 2, rf row; Sec. 3.1 densities): a = 1 - t, b = t, velocity MSE."""

from __future__ import annotations

import torch

from rfsweep.formulations.base import Formulation, VelocityRF
from rfsweep.formulations.densities import DENSITIES


class RectifiedFlow(Formulation):
    """``rf``, ``rf/lognorm(m, s)``, ``rf/mode(s)``, ``rf/cosmap``: one path, four training densities.

    Sampling a density pi(t) is the weighting ``w^pi = t / (1 - t) pi(t)`` of the unified loss (Sec. 3.1).
    Grid: uniform t from 1 to 0 (the rf frame is the native frame).
    """

    family, frame, prediction = "rf", "rf", VelocityRF()

    def __init__(self, density: str = "uniform", name: str = "rf", **params: float):
        self.name, self.density, self.params = name, density, params
        self._draw = DENSITIES[density]

    def coeffs(self, t):
        return 1 - t, t

    def t_rf(self, t):
        return t

    def sample_t(self, n, generator=None, device=None, dtype=None):
        return self._draw(n, **self.params, generator=generator, device=device, dtype=dtype)

    def _grid(self, n_steps):
        return torch.linspace(1, 0, n_steps + 1, dtype=torch.float64)
