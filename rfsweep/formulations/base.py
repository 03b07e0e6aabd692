"""The one place where a formulation meets a backbone and a sampler.

A formulation (Sec. 2 of the paper) is a path ``z_t = a_t x0 + b_t eps`` at its *native* time ``t``, a
training density over ``t``, and a network parameterisation whose MSE is the loss. Subclasses give only
``coeffs(t)``, ``sample_t`` and a sampling grid; loss, velocity and conversions live here, once.

Design decisions shared by every formulation (the paper is silent on them):

* **Backbone time.** The backbone receives the rectified-flow time of the same log-SNR,
  ``t_rf = b / (a + b)`` (``= t`` for rf; ``sigma / (1 + sigma)`` for EDM's VE path with ``a = 1, b = sigma``;
  ``b / (a + b)`` for the VP paths). One backbone then serves every formulation, a backbone knows nothing
  of formulations, and pretrained SD3 weights keep their meaning. For EDM this replaces
  ``c_noise = ln(sigma) / 4``: a monotone reparametrisation of the same noise level.
* **Backbone input.** The path point z itself (unit scale on rf and VP paths), except EDM, whose
  preconditioning wrapper (``EDMPrecond``) feeds ``c_in z`` and combines ``c_skip z + c_out F``.
* **Sampling frame.** The sampler works in the rectified-flow frame: state ``x = z / (a + b)``, time
  ``t_rf``, so ``x = (1 - t_rf) x0 + t_rf eps`` for every formulation. A formulation converts its network
  output once into ``(x0_hat, eps_hat)``; the frame velocity is ``v = eps_hat - x0_hat``. Since
  ``x + (t' - t) v = (1 - t') x0_hat + t' eps_hat``, one Euler step is DDIM in the formulation's own
  coordinates (see ``rfsweep.sampling``).
* **Recovering (a, b) from t_rf.** ``t_rf`` fixes the ratio ``b / a``; the scale follows from the path's
  *frame*: ``"rf"`` (``a + b = 1``), ``"vp"`` (``a^2 + b^2 = 1``) or ``"ve"`` (``a = 1``). The sampler thus
  never inverts a schedule.
* **Validation times.** ``VALIDATION_T`` are the midpoints ``(i + 0.5) / 8`` of eight equal strata of
  native ``t``: several formulations are singular at ``t = 0`` (EDM: ``sigma = 0``) or ``t = 1``
  (eps/cos: ``a = 0``; edm: ``sigma = inf``), so the end points are never used. The common validation loss
  (``rf_velocity_error``) uses the same eight values as rectified-flow times.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from rfsweep.formulations.variants import Family, VariantSpec
from rfsweep.sampling import time_shift
from rfsweep.types import Backbone, Cond

# Sec. 5.1 / App. B.3: validation loss stratified over eight equally spaced t; midpoints avoid singular ends.
VALIDATION_T: tuple[float, ...] = tuple((i + 0.5) / 8 for i in range(8))


def _bcast(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like``."""
    return c.reshape(-1, *([1] * (like.ndim - 1)))


def _as_batch_t(t, n: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.expand(n) if t.ndim == 0 else t


class Prediction:
    """What the network outputs. ``out = F(c_in z, t_rf)``; ``target`` is its regression target; ``to_x0_eps``
    inverts ``out`` into the pair of predictions. All tensors broadcast; ``a, b`` are the path coefficients."""

    kind: ClassVar[Literal["velocity", "eps", "v", "edm"]]

    def c_in(self, a, b):
        return torch.ones_like(a)

    def target(self, x0, eps, a, b):
        raise NotImplementedError

    def to_x0_eps(self, out, z, a, b):
        raise NotImplementedError


class VelocityRF(Prediction):
    """Rectified-flow velocity ``v = eps - x0`` (Sec. 2, rf row)."""

    kind = "velocity"

    def target(self, x0, eps, a, b):
        return eps - x0

    def to_x0_eps(self, out, z, a, b):
        s = a + b  # = 1 on the rf path
        return (z - b * out) / s, (z + a * out) / s


class Eps(Prediction):
    """Noise prediction; ``x0 = (z - b eps) / a`` is singular where ``a = 0``."""

    kind = "eps"

    def target(self, x0, eps, a, b):
        return eps

    def to_x0_eps(self, out, z, a, b):
        return (z - b * out) / a, out


class V(Prediction):
    """v-prediction ``v = a eps - b x0`` on a variance-preserving path (``a^2 + b^2 = 1``)."""

    kind = "v"

    def target(self, x0, eps, a, b):
        return a * eps - b * x0

    def to_x0_eps(self, out, z, a, b):
        return a * z - b * out, b * z + a * out


class EDMPrecond(Prediction):
    """EDM's F-prediction on the VE path ``a = 1, b = sigma`` (Karras et al. 2022, Table 1):
    ``D = c_skip z + c_out F(c_in z)``, loss ``lambda(sigma) ||D - x0||^2 = ||F - F_target||^2``."""

    kind = "edm"

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def c_in(self, a, b):
        return 1 / (b**2 + self.sigma_data**2).sqrt()

    def target(self, x0, eps, a, b):
        # (x0 - c_skip z) / c_out, simplified so nothing cancels at small sigma.
        sd, sigma = self.sigma_data, b
        return (sigma * x0 - sd**2 * eps) / (sd * (sigma**2 + sd**2).sqrt())

    def to_x0_eps(self, out, z, a, b):
        sd, sigma = self.sigma_data, b
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        x0 = c_skip * z + c_out * out
        return x0, (z - x0) / sigma


Frame = Literal["rf", "vp", "ve"]  # which normalisation of (a, b) a path keeps


class Formulation:
    """Base of all 61 variants, built from its spec (``variants.VariantSpec``: family, scheme, parameters), which
    also gives its name. Subclasses set ``frame`` and ``prediction`` and implement ``coeffs(t)``, ``sample_t`` and
    ``_grid(n_steps)`` (unshifted, decreasing rf-frame times ending in 0)."""

    frame: Frame
    prediction: Prediction
    shift: float = 1.0  # Sec. 5.3.2: the shift of the training time draws (rf; `build_formulation(..., shift=)`)

    def __init__(self, spec: VariantSpec):
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def family(self) -> Family:
        return self.spec.family

    def coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Path coefficients (a, b) at native t, tensors like t."""
        raise NotImplementedError

    def sample_t(self, n: int, generator=None, device=None, dtype=None) -> torch.Tensor:
        """(n,) training times drawn from the variant's density, native t."""
        raise NotImplementedError

    def _grid(self, n_steps: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def t_rf(self, t: torch.Tensor) -> torch.Tensor:
        """Rectified-flow time of the same log-SNR: what the backbone sees."""
        a, b = self.coeffs(t)
        return b / (a + b)

    def coeffs_rf(self, t_rf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) of this path at rectified-flow time t_rf, from b/a = t_rf/(1-t_rf) and the frame."""
        a, b = 1 - t_rf, t_rf
        if self.frame == "vp":
            n = (a**2 + b**2).sqrt()
            return a / n, b / n
        if self.frame == "ve":
            return torch.ones_like(t_rf), t_rf / (1 - t_rf)
        return a, b

    def loss(self, net: Backbone, x0: torch.Tensor, cond: Cond, t=None, eps=None, generator=None) -> torch.Tensor:
        """(B,) unreduced loss, mean over non-batch dims. x0: (B, C, H, W); t: native, (B,) or scalar."""
        B = x0.shape[0]
        if t is None:
            t = self.sample_t(B, generator=generator, device=x0.device, dtype=x0.dtype)
        t = _as_batch_t(t, B, x0)
        if eps is None:
            eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        a, b = self.coeffs(t)  # (B,)
        t_rf = self.t_rf(t)  # = t exactly for rf
        a, b = _bcast(a, x0), _bcast(b, x0)
        z = a * x0 + b * eps  # Sec. 2, forward process
        out = net(self.prediction.c_in(a, b) * z, t_rf, cond.context, cond.pooled)
        err = out - self.prediction.target(x0, eps, a, b)
        return err.pow(2).mean(dim=tuple(range(1, x0.ndim)))

    def predict_x0_eps(self, net: Backbone, z, t_rf, cond: Cond):
        """(x0_hat, eps_hat) from one network call at path point z (native coordinates), t_rf: (B,)."""
        a, b = (_bcast(c, z) for c in self.coeffs_rf(t_rf))
        out = net(self.prediction.c_in(a, b) * z, t_rf, cond.context, cond.pooled)
        return self.prediction.to_x0_eps(out, z, a, b)

    def velocity(self, net: Backbone, x: torch.Tensor, t_rf, cond: Cond) -> torch.Tensor:
        """Rectified-flow-frame velocity at state x = z / (a + b): eps_hat - x0_hat. x: (B, C, H, W)."""
        t_rf = _as_batch_t(t_rf, x.shape[0], x)
        a, b = (_bcast(c, x) for c in self.coeffs_rf(t_rf))
        x0, eps = self.predict_x0_eps(net, (a + b) * x, t_rf, cond)
        return eps - x0

    def rf_velocity_error(self, net: Backbone, x0: torch.Tensor, cond: Cond, t_rf, eps: torch.Tensor) -> torch.Tensor:
        """(B,) squared error of the rectified-flow velocity ``eps - x0`` predicted through ``velocity()`` at
        ``x = (1 - t_rf) x0 + t_rf eps``, mean over non-batch dims: one validation loss on one scale for every
        formulation (their own losses weight and parameterise differently, so they do not compare)."""
        t_rf = _as_batch_t(t_rf, x0.shape[0], x0)
        t = _bcast(t_rf, x0)
        err = self.velocity(net, (1 - t) * x0 + t * eps, t_rf, cond) - (eps - x0)
        return err.pow(2).mean(dim=tuple(range(1, x0.ndim)))

    def sampling_grid(self, n_steps: int, shift: float = 1.0) -> torch.Tensor:
        """(n_steps + 1,) float64 decreasing rf-frame times, first t_max, last 0.0; Sec. 5.3 shift applied."""
        if n_steps < 1:
            raise ValueError(f"n_steps={n_steps}: need at least one step")
        return time_shift(self._grid(n_steps).to(torch.float64), shift)
