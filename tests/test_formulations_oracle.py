"""Oracle networks, written from closed forms independently of rfsweep.formulations.

An oracle knows the data distribution, so its prediction is exact: the loss vanishes on one-point data and
the sampler must carry noise to the data, for every variant and step count.
"""

import math

import pytest
import torch

from rfsweep.formulations import ALL_VARIANTS, VALIDATION_T, build_formulation
from rfsweep.sampling import sample
from rfsweep.types import Cond

F64 = torch.float64
SIGMA_DATA = 0.5
STEPS = (5, 10, 25, 50)


def kind_of(name: str) -> str:
    """The parameterisation, read from the name alone: rf velocity, eps, v, or EDM's F."""
    return "edm" if name.startswith("edm") else name.split("/")[0].split("(")[0]


def path_at(kind: str, t_rf: torch.Tensor):
    """(a, b) at rectified-flow time t_rf: rf path, EDM's VE path (a = 1) or a VP path (a^2 + b^2 = 1)."""
    if kind == "rf":
        return 1 - t_rf, t_rf
    if kind == "edm":
        return torch.ones_like(t_rf), t_rf / (1 - t_rf)
    n = torch.sqrt((1 - t_rf) ** 2 + t_rf**2)
    return (1 - t_rf) / n, t_rf / n


def point_x0(x0_star):
    return lambda z, a, b: x0_star.expand_as(z)


def gaussian_x0(mu: float, s: float):
    """E[x0 | z] for x0 ~ N(mu, s^2), z = a x0 + b eps."""
    return lambda z, a, b: mu + a * s**2 / (a**2 * s**2 + b**2) * (z - a * mu)


class Oracle:
    """Backbone ``net(x, t_rf, context, pooled)`` whose output encodes a known (x0_hat, eps_hat).

    ``delta`` perturbs the eps-prediction (eps_hat += delta, x0_hat moves consistently at fixed z).
    """

    def __init__(self, kind: str, x0_model, delta: float = 0.0):
        self.kind, self.x0_model, self.delta = kind, x0_model, delta

    def __call__(self, inp, t_rf, context, pooled):
        a, b = (c.reshape(-1, *[1] * (inp.ndim - 1)) for c in path_at(self.kind, t_rf))
        z = inp * torch.sqrt(b**2 + SIGMA_DATA**2) if self.kind == "edm" else inp  # undo c_in
        x0 = self.x0_model(z, a, b)
        eps = (z - a * x0) / b
        if self.delta:
            eps, x0 = eps + self.delta, x0 - b / a * self.delta
        if self.kind == "rf":
            return eps - x0
        if self.kind == "eps":
            return eps
        if self.kind == "v":
            return a * eps - b * x0
        sigma, sd = b, SIGMA_DATA  # EDM: D = c_skip z + c_out F
        c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / torch.sqrt(sigma**2 + sd**2)
        return (x0 - c_skip * z) / c_out


def cond_for(B: int) -> Cond:
    return Cond(torch.zeros(B, 3, 8, dtype=F64), torch.zeros(B, 8, dtype=F64))


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_oracle_loss_vanishes(name):
    f = build_formulation(name)
    g = torch.Generator().manual_seed(1)
    x0_star = torch.randn(1, 2, 4, 4, generator=g, dtype=F64)
    B = 256
    x0, net = x0_star.expand(B, -1, -1, -1), Oracle(kind_of(name), point_x0(x0_star))
    t = torch.cat([f.sample_t(B - 8, generator=g, dtype=F64), torch.tensor(VALIDATION_T, dtype=F64)])
    loss = f.loss(net, x0, cond_for(B), t=t, generator=g)
    assert loss.shape == (B,)
    assert loss.max() < 1e-14, (name, loss.max().item())
    # and a wrong oracle (one step of noise off in eps space) is not ~0: the targets are checked
    assert f.loss(Oracle(kind_of(name), point_x0(x0_star), delta=0.1), x0, cond_for(B), t=t).min() > 1e-4


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_sampler_recovers_one_point(name):
    f = build_formulation(name)
    x0_star = torch.randn(1, 2, 4, 4, dtype=F64)
    noise = torch.randn(3, 2, 4, 4, dtype=F64)
    net = Oracle(kind_of(name), point_x0(x0_star))
    for steps in STEPS:
        for shift in (1.0, 3.0):
            out = sample(f, net, noise, cond_for(3), steps=steps, shift=shift)
            assert (out - x0_star).abs().max() < 1e-4, (name, steps, shift)


def gaussian_moments(f, net, steps, shift=1.0):
    """Sampled (mean, std) exactly: the oracle's ODE is affine, so two noise values (0 and 1) suffice."""
    noise = torch.stack([torch.zeros(1, 2, 2, dtype=F64), torch.ones(1, 2, 2, dtype=F64)])
    out = sample(f, net, noise, cond_for(2), steps=steps, shift=shift)
    return out[0].mean().item(), (out[1] - out[0]).abs().mean().item()


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_sampler_gaussian_data(name):
    mu, s = 0.7, 0.5
    f = build_formulation(name)
    net = Oracle(kind_of(name), gaussian_x0(mu, s))
    # exact ODE flow map from the grid's start x = t_max noise (t_max < 1 drops a small data term)
    t = f.sampling_grid(10)[0].item()
    S = math.sqrt((1 - t) ** 2 * s**2 + t**2)
    mean_exact, std_exact = mu - s / S * (1 - t) * mu, s * t / S
    errs = []
    for steps in STEPS + (200,):
        m, sd = gaussian_moments(f, net, steps)
        errs.append(abs(m - mean_exact) + abs(sd - std_exact))
    assert all(e2 < e1 for e1, e2 in zip(errs, errs[1:])), (name, errs)  # shrinks with steps
    assert errs[-2] < 0.04 and errs[-1] < 0.01, (name, errs)
    assert errs[-1] < errs[-2] / 3, (name, errs)  # first-order convergence to the exact flow, no bias
    if t == 1.0:  # starting from pure noise the sampler reaches N(mu, s^2) itself
        assert abs(mean_exact - mu) < 1e-12 and abs(std_exact - s) < 1e-12


def test_common_validation_loss_is_one_scale_for_every_formulation():
    """The rf-frame velocity error through each formulation's `velocity()` (the common validation loss) is the same
    number for all 61 variants at the same oracle, while their own losses differ: it compares across formulations.
    A perturbed oracle (eps_hat + delta at fixed z) adds exactly delta^2 / (1 - t_rf)^2 in every frame."""
    g = torch.Generator().manual_seed(3)
    B, mu, s, delta = 64, 0.3, 0.8, 0.05
    x0 = mu + s * torch.randn(B, 2, 4, 4, generator=g, dtype=F64)
    eps = torch.randn(B, 2, 4, 4, generator=g, dtype=F64)
    common, own = {}, {}
    for name in ALL_VARIANTS:
        f, kind = build_formulation(name), kind_of(name)
        exact, off = Oracle(kind, gaussian_x0(mu, s)), Oracle(kind, gaussian_x0(mu, s), delta=delta)
        for t in VALIDATION_T:
            e0 = f.rf_velocity_error(exact, x0, cond_for(B), t, eps)
            e1 = f.rf_velocity_error(off, x0, cond_for(B), t, eps)
            assert e0.shape == (B,)
            common.setdefault(t, []).append(e0.mean().item())
            # the perturbation's error: (v_hat - v) changes by delta + b/a delta = delta / (1 - t_rf) in every frame
            shift = delta / (1 - t)
            expected = 2 * shift * _cross(f, exact, x0, eps, t) + shift**2
            assert torch.allclose((e1 - e0).mean(), expected, atol=1e-10), (name, t)
        own[name] = f.loss(exact, x0, cond_for(B), t=0.5, eps=eps).mean().item()
    for t, values in common.items():
        assert max(values) - min(values) < 1e-10 * max(1.0, max(values)), (t, min(values), max(values))
        assert min(values) > 1e-3  # the Gaussian oracle is not exact per sample: a real error, not zero
    assert max(own.values()) / min(own.values()) > 10  # their own losses are on different scales


def _cross(f, net, x0, eps, t):
    """mean over elements of (v_hat - v) at the oracle: the cross term of the perturbed squared error."""
    B = x0.shape[0]
    x = (1 - t) * x0 + t * eps
    return (f.velocity(net, x, t, cond_for(B)) - (eps - x0)).mean()
