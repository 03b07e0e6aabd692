"""Variance-preserving formulations (Sec. 2, cos and linear rows): eps/cos, v/cos, eps/linear, v/linear.

The loss is the plain MSE of the parameterisation: eps-MSE (w = sech(lambda/2) for cos) or
v-MSE with ``v = a eps - b x0`` (w = e^(-lambda/2) for cos).
"""

from __future__ import annotations

import math

import torch

from rfsweep.formulations.base import Eps, Formulation, V
from rfsweep.formulations.variants import VariantSpec

PREDICTIONS = {"eps": Eps, "v": V}


class CosineVP(Formulation):
    """``a = cos(pi t / 2), b = sin(pi t / 2)``, t ~ U(0, 1).

    Grid: uniform native t from t_max to 0. t_max = 1 for v; for eps, x0 = (z - b eps) / a is singular at
    a = 0, so it starts where b / a = 80 (EDM's sigma_max).
    """

    frame = "vp"
    SIGMA_MAX = 80.0

    def __init__(self, spec: VariantSpec):
        super().__init__(spec)
        self.prediction = PREDICTIONS[spec.family]()

    def coeffs(self, t):
        return torch.cos(math.pi * t / 2).clamp(min=0), torch.sin(math.pi * t / 2)  # clamp: cos(pi/2) < 0 in float

    def sample_t(self, n, generator=None, device=None, dtype=None):
        return torch.rand(n, generator=generator, device=device, dtype=dtype)

    def _grid(self, n_steps):
        t_max = 1.0 if self.family == "v" else 2 / math.pi * math.atan(self.SIGMA_MAX)
        return self.t_rf(torch.linspace(t_max, 0, n_steps + 1, dtype=torch.float64))


def ldm_alphas_cumprod(beta_0: float = 0.00085, beta_1: float = 0.012, T: int = 1000) -> torch.Tensor:
    """(T,) float64 alphabar of the LDM "scaled linear" betas (Sec. 2, LDM-linear)."""
    betas = torch.linspace(beta_0**0.5, beta_1**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


class LinearVP(Formulation):
    """LDM-linear, ``a = sqrt(alphabar), b = sqrt(1 - alphabar)``, T = 1000 discrete steps.

    Step k = 0..T-1 sits at native t = (k + 1) / T, t = 0 is clean data (alphabar = 1); between those points
    log alphabar is linear in t, so the sampler and validation can use any t. Training draws k uniformly.
    Grid: diffusers' "trailing" spacing over the steps (includes k = T-1, t = 1), then t = 0. The terminal
    SNR is not zero (a_1 = 0.068): sampling starts from pure noise as usual, dropping the a_1 x0 term.
    """

    frame = "vp"

    def __init__(self, spec: VariantSpec, T: int = 1000):
        super().__init__(spec)
        self.prediction, self.T = PREDICTIONS[spec.family](), T
        self.log_alphabar = torch.cat([torch.zeros(1, dtype=torch.float64), ldm_alphas_cumprod(T=T).log()])  # (T+1,)

    def coeffs(self, t):
        table = self.log_alphabar.to(device=t.device, dtype=t.dtype)
        pos = t.clamp(0, 1) * self.T
        lo = pos.floor().clamp(max=self.T - 1)
        frac, lo = pos - lo, lo.long()
        la = table[lo] * (1 - frac) + table[lo + 1] * frac
        return (la / 2).exp(), (-torch.expm1(la)).abs().sqrt()  # abs: no -0.0 at t = 0

    def sample_t(self, n, generator=None, device=None, dtype=None):
        k = torch.randint(0, self.T, (n,), generator=generator, device=device)
        return (k + 1).to(dtype or torch.get_default_dtype()) / self.T

    def _grid(self, n_steps):
        k_plus_1 = torch.arange(self.T, 0, -self.T / n_steps, dtype=torch.float64).round()  # trailing
        t_rf = self.t_rf(torch.cat([k_plus_1 / self.T, torch.zeros(1, dtype=torch.float64)]))
        return t_rf
