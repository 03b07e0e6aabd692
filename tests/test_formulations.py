"""Paths, parameterisations and losses of the 61 formulations against closed forms (Sec. 2)."""

import math

import pytest
import torch
from scipy import stats

from rfsweep.formulations import ALL_VARIANTS, VALIDATION_T, build_formulation, parse_variant
from rfsweep.formulations.vp import ldm_alphas_cumprod
from rfsweep.types import Cond

F64 = torch.float64
T = torch.linspace(0.01, 0.99, 99, dtype=F64)


def closed_form_coeffs(name, t):
    """(a, b) of Sec. 2 at native t."""
    if name.startswith("rf"):
        return 1 - t, t
    if name in ("eps/cos", "v/cos"):
        return torch.cos(math.pi * t / 2), torch.sin(math.pi * t / 2)
    if name == "edm/rf":
        return torch.ones_like(t), t / (1 - t)
    if name == "edm/cos":
        return torch.ones_like(t), torch.tan(math.pi * t / 2)
    pm, ps = parse_variant(name).params
    sigma = torch.from_numpy(stats.norm.ppf(t.numpy(), pm, ps)).exp()
    return torch.ones_like(t), sigma


@pytest.mark.parametrize("name", [n for n in ALL_VARIANTS if "linear" not in n])
def test_coeffs_closed_form(name):
    a, b = build_formulation(name).coeffs(T)
    a_want, b_want = closed_form_coeffs(name, T)
    torch.testing.assert_close(a, a_want.to(F64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b, b_want.to(F64), rtol=1e-10, atol=1e-12)


def test_linear_matches_diffusers():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ab = sched.alphas_cumprod.double()
    torch.testing.assert_close(ldm_alphas_cumprod(), ab, rtol=0, atol=1e-6)
    for name in ("eps/linear", "v/linear"):
        f = build_formulation(name)
        a, b = f.coeffs(torch.arange(1, 1001, dtype=F64) / 1000)  # step k at t = (k+1)/T
        torch.testing.assert_close(a**2, ab, rtol=0, atol=1e-6)
        torch.testing.assert_close(a**2 + b**2, torch.ones_like(a))
        a0, b0 = f.coeffs(torch.zeros(1, dtype=F64))
        assert a0.item() == 1.0 and b0.item() == 0.0  # t = 0 is clean data
        # in between, log alphabar is linear in t
        a_mid, _ = f.coeffs(torch.tensor([0.5005], dtype=F64))
        ours = ldm_alphas_cumprod()
        torch.testing.assert_close(a_mid.log() * 2, (ours[499].log() + ours[500].log()).reshape(1) / 2)
        assert abs(a[-1].item() - 0.0683) < 1e-3  # non-zero terminal SNR


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_path_properties(name):
    f = build_formulation(name)
    a, b = f.coeffs(T)
    lam = 2 * torch.log(a / b)
    assert (lam[1:] < lam[:-1]).all()  # log-SNR decreasing in t: t = 0 data, t = 1 noise
    t_rf = f.t_rf(T)
    torch.testing.assert_close(t_rf, b / (a + b))
    # the frame lets the sampler recover (a, b) from t_rf alone
    a2, b2 = f.coeffs_rf(t_rf)
    torch.testing.assert_close(a2, a, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(b2, b, rtol=1e-9, atol=1e-12)
    if name.startswith("rf") or name == "edm/rf":
        torch.testing.assert_close(t_rf, T)  # rf's and edm/rf's native t is the rf time itself
    assert f.family in ("rf", "edm", "eps", "v")


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_predictions_invert(name):
    """to_x0_eps inverts the regression target: target(x0, eps) read back at z = a x0 + b eps gives (x0, eps)."""
    f = build_formulation(name)
    x0, eps = torch.randn(2, 99, 3, dtype=F64)
    a, b = (c[:, None] for c in f.coeffs(T))
    p = f.prediction
    x0_hat, eps_hat = p.to_x0_eps(p.target(x0, eps, a, b), a * x0 + b * eps, a, b)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def tiny_net(x, t, context, pooled):
    return torch.tanh(0.7 * x + t.reshape(-1, 1, 1, 1)) + 0.1 * pooled.mean(1).reshape(-1, 1, 1, 1)


def test_edm_loss_is_karras():
    """F-MSE equals EDM's lambda(sigma) ||D - x0||^2 with D = c_skip z + c_out F(c_in z, c_noise)."""
    for name in ("edm(-1.20, 1.20)", "edm/rf", "edm/cos"):
        f = build_formulation(name)
        x0, eps = torch.randn(2, 16, 2, 3, 3, dtype=F64)
        t = torch.rand(16, dtype=F64)
        cond = Cond(torch.zeros(16, 1, 4, dtype=F64), torch.randn(16, 4, dtype=F64))
        _, sigma = f.coeffs(t)
        s, sd = sigma.reshape(-1, 1, 1, 1), 0.5
        z = x0 + s * eps
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
        D = c_skip * z + c_out * tiny_net(c_in * z, sigma / (1 + sigma), *cond)
        want = ((s**2 + sd**2) / (s * sd) ** 2 * (D - x0) ** 2).mean((1, 2, 3))
        torch.testing.assert_close(f.loss(tiny_net, x0, cond, t=t, eps=eps), want)


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_validation_loss_deterministic(name):
    f = build_formulation(name)
    assert VALIDATION_T == tuple((i + 0.5) / 8 for i in range(8))
    x0, eps = torch.randn(2, 4, 2, 4, 4)
    cond = Cond(torch.zeros(4, 1, 4), torch.randn(4, 4))
    for ti in VALIDATION_T:
        t = torch.full((4,), ti)
        l1, l2 = f.loss(tiny_net, x0, cond, t=t, eps=eps), f.loss(tiny_net, x0, cond, t=ti, eps=eps)
        assert l1.shape == (4,) and torch.isfinite(l1).all()
        assert torch.equal(l1, l2)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(f.loss(tiny_net, x0, cond, generator=g1), f.loss(tiny_net, x0, cond, generator=g2))


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_training_float32_finite(name):
    """Whole batches of sampled t, float32 as in training: finite loss and t inside [0, 1]."""
    f = build_formulation(name)
    t = f.sample_t(4096, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.shape == (4096,) and 0 <= t.min() and t.max() <= 1
    x0 = torch.randn(4096, 1, 2, 2)
    cond = Cond(torch.zeros(4096, 1, 4), torch.zeros(4096, 4))
    assert torch.isfinite(f.loss(tiny_net, x0, cond, t=t)).all()
    assert torch.isfinite(f.loss(tiny_net, x0, cond, t=torch.tensor([0.0, 1.0]).repeat(2048))).all()


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_sampling_grid(name):
    f = build_formulation(name)
    for n in (1, 5, 10, 25, 50):
        for shift in (1.0, 3.0):
            g = f.sampling_grid(n, shift=shift)
            assert g.shape == (n + 1,) and g.dtype == F64
            assert (g[1:] < g[:-1]).all() and g[-1].item() == 0.0 and g[0] <= 1
    g = f.sampling_grid(10)
    t_max = 80 / 81  # sigma_max = 80 where the formulation is singular at t_rf = 1
    want = {"rf": 1.0, "v/cos": 1.0, "eps/cos": t_max, "edm": t_max}
    if "linear" in name:
        a, b = ldm_alphas_cumprod()[-1].sqrt(), (1 - ldm_alphas_cumprod()[-1]).sqrt()
        assert abs(g[0].item() - (b / (a + b)).item()) < 1e-12
    else:
        key = "edm" if name.startswith("edm") else name.split("(")[0] if name in want else "rf"
        assert abs(g[0].item() - want[key]) < 1e-12, (name, g[0].item())
    if name.startswith("rf"):  # SD3's grid: 10 times from 1 to the first training timestep 1/1000, then 0
        torch.testing.assert_close(g, torch.cat([torch.linspace(1, 1e-3, 10, dtype=F64), torch.zeros(1, dtype=F64)]))
    if name.startswith("edm("):  # Karras et al. 2022 Eq. 5, rho = 7, sigma in [0.002, 80], then 0
        i = torch.arange(10, dtype=F64) / 9
        sigma = (80 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        torch.testing.assert_close(g[:-1], sigma / (1 + sigma))
    if "linear" in name:  # trailing: steps k = 999, 899, ..., 99 at t = (k+1)/T, then t = 0
        f_t = build_formulation(name).t_rf(torch.linspace(1, 0, 11, dtype=F64))
        torch.testing.assert_close(g, f_t)
