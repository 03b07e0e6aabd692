"""The one sampler of the study: Euler on the probability-flow ODE (Sec. 5.1: "Euler discretization").

Every formulation is integrated in the rectified-flow frame: state ``x = z / (a + b)``, time
``t_rf = b / (a + b)``, velocity ``v = eps_hat - x0_hat`` (``Formulation.velocity``). An Euler step
``x' = x + (t' - t) v = (1 - t') x0_hat + t' eps_hat`` keeps ``eps_hat`` fixed, so it is

* DDIM (eta = 0) in the formulation's own coordinates ``z = a x0 + b eps``,
* k-diffusion's ``sample_euler`` (and sd3.5's ``sd3_impls`` Euler, which reuses it) in the VE frame
  ``z / a`` with ``sigma = t_rf / (1 - t_rf)``: ``x_k' = x_k + (sigma' - sigma) eps_hat``,
* and, for rectified flow, plain Euler in t.

``euler`` never knows the backbone or the formulation; ``sample`` joins them with classifier-free guidance.
"""

from __future__ import annotations

from typing import Callable

import torch

from rfsweep.types import Cond


def time_shift(t, alpha: float = 1.0):
    """Sec. 5.3, resolution-dependent shift ``t_m = alpha t_n / (1 + (alpha - 1) t_n)``; identity at alpha=1."""
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


def euler(velocity_fn: Callable, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Integrate dx/dt = velocity_fn(x, t) along the grid ts (n+1,) from ts[0] to ts[-1]; x: (B, ...)."""
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * velocity_fn(x, t)
    return x


def _cat(c: Cond, u: Cond, B: int) -> Cond:
    u = Cond(*(v.expand(B, *v.shape[1:]) if v.shape[0] == 1 else v for v in u))
    return Cond(torch.cat([c.context, u.context]), torch.cat([c.pooled, u.pooled]))


@torch.no_grad()
def sample(formulation, net, noise: torch.Tensor, cond: Cond, uncond: Cond | None = None, steps: int = 50,
           guidance: float = 1.0, shift: float = 1.0) -> torch.Tensor:
    """x0 samples (B, C, H, W) from noise (B, C, H, W).

    Classifier-free guidance ``v = v_u + guidance (v_c - v_u)`` with conditional and unconditional halves in one
    forward pass; at ``guidance == 1`` the unconditional pass is skipped. ``uncond`` may have batch 1.
    """
    ts = formulation.sampling_grid(steps, shift).to(device=noise.device, dtype=noise.dtype)
    B = noise.shape[0]
    if guidance == 1.0:
        def v(x, t):
            return formulation.velocity(net, x, t, cond)
    else:
        if uncond is None:
            raise ValueError(f"guidance={guidance} needs an unconditional Cond (uncond=None given)")
        both = _cat(cond, uncond, B)

        def v(x, t):
            v_c, v_u = formulation.velocity(net, torch.cat([x, x]), t, both).chunk(2)
            return v_u + guidance * (v_c - v_u)

    # Start at t_max of the grid: x = (1 - t_max) x0 + t_max eps with the data term dropped (= noise for rf).
    return euler(v, ts[0] * noise, ts)
