"""Rectified flow (Sec. 2, rf row; Sec. 3.1 densities): a = 1 - t, b = t, velocity MSE."""

from __future__ import annotations

import torch

from rfsweep.formulations.base import Formulation, VelocityRF
from rfsweep.formulations.densities import DENSITIES
from rfsweep.formulations.variants import VariantSpec


class RectifiedFlow(Formulation):
    """``rf``, ``rf/lognorm(m, s)``, ``rf/mode(s)``, ``rf/cosmap``: one path, four training densities.

    Sampling a density pi(t) is the weighting ``w^pi = t / (1 - t) pi(t)`` of the unified loss (Sec. 3.1).
    Grid: uniform t from 1 to 0 (the rf frame is the native frame).
    """

    frame, prediction = "rf", VelocityRF()

    def __init__(self, spec: VariantSpec):
        super().__init__(spec)
        self.density, self.params = spec.scheme, spec.kwargs
        self._draw = DENSITIES[self.density]

    def coeffs(self, t):
        return 1 - t, t

    def t_rf(self, t):
        return t

    def sample_t(self, n, generator=None, device=None, dtype=None):
        return self._draw(n, **self.params, generator=generator, device=device, dtype=dtype)

    def _grid(self, n_steps):
        return torch.linspace(1, 0, n_steps + 1, dtype=torch.float64)
