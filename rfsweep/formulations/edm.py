"""EDM (Karras et al. 2022) in the paper's study (Sec. 2, edm row; Sec. 5.1.1 edm/rf, edm/cos).

VE path ``a = 1, b = sigma(t)``, F-prediction with EDM preconditioning (``EDMPrecond``, sigma_data = 0.5),
loss ``lambda(sigma) ||D - x0||^2``. The schedule sigma(t) at native t ~ U(0, 1) sets the log-SNR density:

* ``edm(P_mean, P_std)``: ``sigma = exp(P_mean + P_std Phi^-1(t))``, i.e. ln sigma ~ N(P_mean, P_std^2).
* ``edm/rf``: ``sigma = t / (1 - t)`` (the log-SNR of rf at uniform t); ``edm/cos``: ``sigma = tan(pi t / 2)``.

Why a *schedule* (the paper gives no detail). In the unified loss (Sec. 2) the weight over
``lambda = log(a^2 / b^2)`` of any variant factors into the density of lambda it trains on and the weight
``C(lambda)`` its loss puts on the eps-error: ``w(lambda) = p(lambda) C(lambda)``. EDM's
``w = N(lambda | -2 P_mean, (2 P_std)^2) (e^-lambda + 0.5^2)`` is ``p_edm(lambda) C_edm(lambda)`` with
``C_edm = (sigma^2 + sigma_data^2) / sigma_data^2``. So ``edm/rf`` is ``p_rf(lambda) C_edm(lambda)`` and
``edm/cos`` is ``p_cos(lambda) C_edm(lambda)``: EDM's preconditioning and loss weight, rf's resp. cos's noise
schedule. (Matching the *total* weight instead would make both one variant: ``w_rf = t / (1 - t) =
e^(-lambda/2)`` is proportional to ``w_{v/cos}``.)

Clamping: t is clamped to [T_EPS, 1 - T_EPS] inside ``sigma(t)`` so sigma stays in (0, inf) at the ends.

Sampling grids (the paper is silent): ``edm(P_mean, P_std)`` uses EDM's own (rho = 7, sigma_max = 80,
sigma_min = 0.002, then 0); ``edm/rf`` and ``edm/cos`` use their schedule with uniform steps in t, as EDM
does for a given schedule sigma(t) (EDM Table 1), started where sigma = sigma_max = 80.
"""

from __future__ import annotations

import math

import torch

from rfsweep.formulations.base import EDMPrecond, Formulation
from rfsweep.formulations.variants import VariantSpec

T_EPS = 1e-6


class EDM(Formulation):
    frame = "ve"

    def __init__(self, spec: VariantSpec, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0):
        super().__init__(spec)
        p = spec.kwargs
        self.schedule, self.P_mean, self.P_std = spec.scheme, p.get("P_mean", -1.2), p.get("P_std", 1.2)
        self.prediction = EDMPrecond(sigma_data)
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho

    def sigma(self, t):
        t = t.clamp(T_EPS, 1 - T_EPS)
        if self.schedule == "rf":
            return t / (1 - t)
        if self.schedule == "cos":
            return torch.tan(math.pi * t / 2)
        return torch.exp(self.P_mean + self.P_std * torch.special.ndtri(t))

    def coeffs(self, t):
        sigma = self.sigma(t)
        return torch.ones_like(sigma), sigma

    def sample_t(self, n, generator=None, device=None, dtype=None):
        return torch.rand(n, generator=generator, device=device, dtype=dtype)

    def _grid(self, n_steps):
        f64 = torch.float64
        if self.schedule == "lognormal":  # Karras et al. 2022, Eq. 5
            i = torch.arange(n_steps, dtype=f64) / max(n_steps - 1, 1)
            lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
            sigma = (hi + i * (lo - hi)) ** self.rho
        else:  # uniform native t from sigma(t_max) = sigma_max
            t_max = {"rf": self.sigma_max / (1 + self.sigma_max), "cos": 2 / math.pi * math.atan(self.sigma_max)}
            sigma = self.sigma(torch.linspace(t_max[self.schedule], 0, n_steps + 1, dtype=f64)[:-1])
        t_rf = sigma / (1 + sigma)
        return torch.cat([t_rf, t_rf.new_zeros(1)])
