"""Training densities and the weighting each variant induces over log-SNR (Sec. 2-3.1).

The weight over lambda = log(a^2/b^2) is p(lambda) C(lambda): the density of lambda that ``sample_t`` draws
times the factor C by which ``loss`` multiplies an eps-error at fixed z (measured with a perturbed oracle).
It must be proportional to the paper's w(lambda), written here in closed form.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit, logit

from rfsweep.formulations import ALL_VARIANTS, build_formulation, parse_variant
from tests.test_formulations_oracle import Oracle, cond_for, kind_of, point_x0

F64 = torch.float64
RF = [n for n in ALL_VARIANTS if n.startswith("rf")]


def mode_cdf(t, s):
    """P(T <= t) for t = f(u) = 1 - u - s (cos^2(pi u/2) - 1 + u), f decreasing: 1 - f^-1(t) (bisection)."""
    t = np.asarray(t, dtype=np.float64)
    lo, hi = np.zeros_like(t), np.ones_like(t)
    for _ in range(60):
        u = (lo + hi) / 2
        f = 1 - u - s * (np.cos(np.pi * u / 2) ** 2 - 1 + u)
        lo, hi = np.where(f > t, u, lo), np.where(f > t, hi, u)
    return 1 - (lo + hi) / 2


def rf_cdf(name):
    """Closed-form CDF of the rf training density (Sec. 3.1)."""
    spec = parse_variant(name)
    p = dict(zip(spec.param_names, spec.params))
    if spec.scheme == "lognorm":
        return lambda t: stats.norm.cdf((logit(np.clip(t, 1e-300, 1 - 1e-16)) - p["m"]) / p["s"])
    if spec.scheme == "mode":
        return lambda t: mode_cdf(t, p["s"])
    if spec.scheme == "cosmap":
        return lambda t: 2 / np.pi * np.arctan(t / np.maximum(1 - t, 1e-300))
    return lambda t: np.clip(t, 0, 1)


def paper_w(name):
    """w(lambda) of Sec. 2 for the continuous non-rf variants, up to a constant."""
    if name == "eps/cos":
        return lambda lam: 1 / np.cosh(lam / 2)
    if name == "v/cos":
        return lambda lam: np.exp(-lam / 2)
    c_edm = lambda lam: np.exp(-lam) + 0.5**2  # noqa: E731
    if name == "edm/rf":  # rf's schedule: p_rf(lambda) = t (1 - t) / 2 = sech^2(lambda/4) / 8
        return lambda lam: np.cosh(lam / 4) ** -2 * c_edm(lam)
    if name == "edm/cos":  # cos's schedule: p_cos(lambda) = sech(lambda/2) / (2 pi)
        return lambda lam: 1 / np.cosh(lam / 2) * c_edm(lam)
    pm, ps = parse_variant(name).params
    return lambda lam: stats.norm.pdf(lam, -2 * pm, 2 * ps) * c_edm(lam)


def bin_weight(name, edges):
    """Integral of the paper's weight over each lambda bin."""
    if name.startswith("rf"):
        # w^pi(lambda) = t/(1-t) pi(t), t = sigmoid(-lambda/2): integral = int 2 pi(t) / (1-t)^2 dt, done as a
        # Stieltjes sum over the CDF so sharp densities (rf/mode(1.75)) are integrated exactly.
        cdf, out = rf_cdf(name), []
        for l0, l1 in zip(edges[:-1], edges[1:]):
            t = np.linspace(expit(-l1 / 2), expit(-l0 / 2), 2001)
            tm = (t[1:] + t[:-1]) / 2
            out.append(np.sum(2 / (1 - tm) ** 2 * np.diff(cdf(t))))
        return np.array(out)
    w = paper_w(name)
    lam = edges[:-1, None] + (np.arange(200) + 0.5)[None] / 200 * np.diff(edges)[:, None]
    return w(lam).mean(1) * np.diff(edges)


@pytest.mark.parametrize("name", [n for n in ALL_VARIANTS if "linear" not in n])
def test_induced_weighting_matches_paper(name):
    f = build_formulation(name)
    g = torch.Generator().manual_seed(0)
    N = 400_000
    t = f.sample_t(N, generator=g, dtype=F64)
    x0_star = torch.full((1, 1, 1, 1), 0.3, dtype=F64)
    x0, eps = x0_star.expand(N, 1, 1, 1), torch.randn(N, 1, 1, 1, generator=g, dtype=F64)
    C = f.loss(Oracle(kind_of(name), point_x0(x0_star), delta=1.0), x0, cond_for(N), t=t, eps=eps).numpy()
    a, b = f.coeffs(t)
    lam = (2 * torch.log(a / b)).numpy()
    edges = np.linspace(*np.quantile(lam, [0.002, 0.998]), 31)
    idx = np.digitize(lam, edges) - 1  # bincount, not np.histogram: its cumsum loses bins next to C ~ 1e22
    inside = (idx >= 0) & (idx < 30)
    hist = np.bincount(idx[inside], weights=C[inside], minlength=30)
    count = np.bincount(idx[inside], minlength=30)
    keep = count >= 0.01 * N
    assert keep.sum() >= 10, (name, count)
    want = bin_weight(name, edges)[keep]
    got = hist[keep]
    ratio = (got / got.sum()) / (want / want.sum())
    assert np.abs(ratio - 1).max() < 0.1, (name, np.round(ratio, 3))


@pytest.mark.parametrize("name", ["eps/linear", "v/linear"])
def test_linear_weighting(name):
    """Discrete-uniform steps (t = (k+1)/T) and C = 1 (eps-MSE) resp. 1 + e^-lambda (v-MSE)."""
    f = build_formulation(name)
    t = f.sample_t(200_000, generator=torch.Generator().manual_seed(0), dtype=F64)
    k = (t * 1000).round().long() - 1
    assert torch.allclose(t, (k + 1).to(F64) / 1000, atol=1e-12) and k.min() == 0 and k.max() == 999
    counts = torch.bincount(k, minlength=1000).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3
    tk = torch.arange(1, 1001, dtype=F64) / 1000
    x0_star = torch.full((1, 1, 1, 1), 0.3, dtype=F64)
    C = f.loss(Oracle(kind_of(name), point_x0(x0_star), delta=1.0), x0_star.expand(1000, 1, 1, 1),
               cond_for(1000), t=tk).numpy()
    a, b = f.coeffs(tk)
    lam = (2 * torch.log(a / b)).numpy()
    want = np.ones_like(lam) if name == "eps/linear" else 1 + np.exp(-lam)
    np.testing.assert_allclose(C, want, rtol=1e-9)


@pytest.mark.parametrize("name", RF)
def test_rf_density_ks(name):
    t = build_formulation(name).sample_t(20_000, generator=torch.Generator().manual_seed(3), dtype=F64).numpy()
    assert t.min() >= 0 and t.max() <= 1
    assert stats.kstest(t, rf_cdf(name)).pvalue > 1e-3


@pytest.mark.parametrize("name", [n for n in ALL_VARIANTS if n.startswith("edm(")])
def test_edm_log_sigma_is_normal(name):
    pm, ps = parse_variant(name).params
    f = build_formulation(name)
    _, sigma = f.coeffs(f.sample_t(20_000, generator=torch.Generator().manual_seed(4), dtype=F64))
    assert stats.kstest(sigma.log().numpy(), stats.norm(pm, ps).cdf).pvalue > 1e-3


@pytest.mark.parametrize("name", ["rf", "rf/lognorm(0.00, 1.00)", "rf/lognorm(1.00, 0.60)", "rf/lognorm(-0.50, 2.20)",
                                  "rf/mode(1.29)", "rf/mode(-1.00)", "rf/mode(1.75)"])
def test_rf_density_matches_diffusers(name):
    from diffusers.training_utils import compute_density_for_timestep_sampling

    spec = parse_variant(name)
    p = dict(zip(spec.param_names, spec.params))
    scheme = {"lognorm": "logit_normal", "mode": "mode", "uniform": "none"}[spec.scheme]
    kw = {"logit_mean": p.get("m"), "logit_std": p.get("s"), "mode_scale": p.get("s")}
    theirs = compute_density_for_timestep_sampling(scheme, 20_000, generator=torch.Generator().manual_seed(5), **kw)
    ours = build_formulation(name).sample_t(20_000, generator=torch.Generator().manual_seed(6))
    assert stats.ks_2samp(ours.numpy(), theirs.numpy()).pvalue > 1e-3
    if scheme != "logit_normal":  # same transform of the same uniform draws
        same = build_formulation(name).sample_t(20_000, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(same, theirs)


def test_cosmap_density_formula():
    """Sec. 3.1: the CosMap density is 2 / (pi - 2 pi t + 2 pi t^2); check against the CDF we test with."""
    t = np.linspace(0.01, 0.99, 99)
    h = 1e-6
    num = (rf_cdf("rf/cosmap")(t + h) - rf_cdf("rf/cosmap")(t - h)) / (2 * h)
    np.testing.assert_allclose(num, 2 / (math.pi - 2 * math.pi * t + 2 * math.pi * t**2), rtol=1e-5)
