"""Rectified flow (Sec. 2, rf row; Sec. 3.1 densities): a = 1 - t, b = t, velocity MSE."""

from __future__ import annotations

import torch

from rfsweep.formulations.base import Formulation, VelocityRF
from rfsweep.formulations.densities import DENSITIES
from rfsweep.formulations.variants import VariantSpec
from rfsweep.sampling import time_shift


class RectifiedFlow(Formulation):
    """``rf``, ``rf/lognorm(m, s)``, ``rf/mode(s)``, ``rf/cosmap``: one path, four training densities.

    Sampling a density pi(t) is the weighting ``w^pi = t / (1 - t) pi(t)`` of the unified loss (Sec. 3.1).
    Grid: SD3's own (sd3.5 `sd3_impls`, diffusers' `FlowMatchEulerDiscreteScheduler`): N times evenly spaced from
    t = 1 to the shifted t of the first of the 1000 training timesteps (1/1000), each shifted, then 0. diffusers
    shifts that smallest t twice (it is taken from the already shifted training sigmas), and so does this grid: at
    shift 3 and 28 steps it ends 0.19983, 0.11091, 0.00893, 0; at shift 1 and 5 steps it is 1, 0.75025, 0.5005,
    0.25075, 0.001, 0 (the last step, from 0.001 to 0, does almost nothing).
    """

    T = 1000  # training timesteps of SD3's discrete schedule

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
        """Draws of the density, shifted by `shift` (Sec. 5.3.2: t_m = alpha t_n / (1 + (alpha - 1) t_n))."""
        return time_shift(self._draw(n, **self.params, generator=generator, device=device, dtype=dtype), self.shift)

    def sampling_grid(self, n_steps: int, shift: float = 1.0) -> torch.Tensor:
        if n_steps < 1:
            raise ValueError(f"n_steps={n_steps}: need at least one step")
        t_min = float(time_shift(torch.tensor(1.0 / self.T, dtype=torch.float64), shift))
        t = time_shift(torch.linspace(1.0, t_min, n_steps, dtype=torch.float64), shift)
        return torch.cat([t, t.new_zeros(1)])
