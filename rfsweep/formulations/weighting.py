"""What a formulation does to training, measured from the objects that train: the density of its time draws
(`sample_t`) over t and over log-SNR lambda = log(a^2 / b^2), the weight its `loss` puts on an eps-error at each lambda,
and their product, the effective weight over lambda, which is the paper's w(lambda) (Sec. 2: the loss is
-1/2 E_t[w_t lambda'_t ||eps_hat - eps||^2], so a density over lambda times the per-lambda weight is w).

The weight is measured, not re-typed: a probe network returns, for one-point data x0 = 0, the prediction of
(x0 - (b/a) delta, eps + delta) (the same z with the eps-prediction off by delta) in the formulation's own
parameterisation, and `loss` reports what that costs. The paper's closed forms (Sec. 2, Sec. 3.1, Sec. 5.3 for the
shift) are given beside them where the paper states one: the rf densities, the cosine schedule, EDM's log-normal
sigma; the two LDM-linear variants are discrete and have none.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rfsweep.formulations.base import Formulation
from rfsweep.types import Cond

F64 = torch.float64
SIGMA_DATA = 0.5  # EDM's sigma_data (Karras et al. 2022), as rfsweep's EDMPrecond


class _Probe:
    """A backbone whose prediction is exact for x0 = 0 except an eps-error `delta` at fixed z."""

    def __init__(self, f: Formulation, delta: float = 1.0):
        self.f, self.delta = f, delta

    def __call__(self, inp, t_rf, context, pooled):
        a, b = (c.reshape(-1, *[1] * (inp.ndim - 1)) for c in self.f.coeffs_rf(t_rf))
        z = inp / self.f.prediction.c_in(a, b)
        x0 = torch.zeros_like(z)
        eps = (z - a * x0) / b
        return self.f.prediction.target(x0 - b / a * self.delta, eps + self.delta, a, b)


def draws(f: Formulation, n: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, lambda, C): n training times drawn as training draws them, their log-SNR, and the weight `loss` puts on a
    unit eps-error at each (float64)."""
    g = torch.Generator().manual_seed(seed)
    t = f.sample_t(n, generator=g, dtype=F64)
    x0 = torch.zeros(n, 1, 1, 1, dtype=F64)
    eps = torch.randn(n, 1, 1, 1, generator=g, dtype=F64)
    cond = Cond(torch.zeros(n, 1, 1, dtype=F64), torch.zeros(n, 1, dtype=F64))
    c = f.loss(_Probe(f), x0, cond, t=t, eps=eps)
    a, b = f.coeffs(t)
    return t.numpy(), (2 * torch.log(a / b)).numpy(), c.numpy()


def _hist(x: np.ndarray, edges: np.ndarray, weights=None) -> np.ndarray:
    """Per-bin sums (np.bincount: np.histogram's cumulative sums lose bins next to weights of 1e22)."""
    idx = np.digitize(x, edges) - 1
    inside = (idx >= 0) & (idx < len(edges) - 1)
    return np.bincount(idx[inside], weights=None if weights is None else weights[inside], minlength=len(edges) - 1)


def measure(f: Formulation, n: int = 200_000, bins: int = 40, seed: int = 0) -> dict:
    """The measured curves of `f` and the paper's beside them (None where the paper gives none), on bins holding the
    central 99.6% of the draws: `lambda` (bin centres), `count`, `density_lambda`, `loss_weight` (mean C per bin),
    `effective` (density x weight, normalised to integrate to 1), `paper_density_lambda`, `paper_effective`; and `t`,
    `density_t`, `paper_density_t` over [0, 1]."""
    t, lam, c = draws(f, n, seed)
    edges = np.linspace(*np.quantile(lam, [0.002, 0.998]), bins + 1)
    width = np.diff(edges)
    centres = (edges[:-1] + edges[1:]) / 2
    count = _hist(lam, edges)
    csum = _hist(lam, edges, c)
    density = count / (n * width)
    effective = csum / width
    effective = effective / (effective * width).sum()
    t_edges = np.linspace(0, 1, bins + 1)
    t_edges[1:-1] += 1e-9  # discrete times (k / 1000, the LDM-linear steps) on a bin edge fall on one side of it
    paper = _paper_bins(f, edges, t_edges)
    pw = paper["effective"]
    return {
        "lambda": centres, "count": count, "density_lambda": density,
        "loss_weight": np.divide(csum, count, out=np.full(bins, np.nan), where=count > 0), "effective": effective,
        "paper_density_lambda": paper["density_lambda"],
        "paper_effective": pw / (pw * width).sum() if pw is not None else None,
        "t": (t_edges[:-1] + t_edges[1:]) / 2, "density_t": _hist(t, t_edges) / (n * np.diff(t_edges)),
        "paper_density_t": paper["density_t"],
    }


def _paper_bins(f: Formulation, edges: np.ndarray, t_edges: np.ndarray) -> dict:
    """The paper's curves as a histogram shows them: each bin's integral over its width. For rf through the CDF of
    t (exact where the density is sharp, e.g. rf/mode(1.75) near its singular peak); else by the midpoint rule."""
    cdf = paper_cdf_t(f)
    if cdf is None:
        p, w = paper_density_lambda(f), paper_weight(f)
        return {"density_lambda": _bin_mean(p, edges) if p else None, "effective": _bin_mean(w, edges) if w else None,
                "density_t": None}
    t_hi, t_lo = _sigmoid(-edges[:-1] / 2), _sigmoid(-edges[1:] / 2)  # lambda increasing: t decreasing
    grid = t_lo[:, None] + (t_hi - t_lo)[:, None] * np.linspace(0, 1, 2001)[None]
    mass = np.diff(cdf(grid), axis=1)
    mid = (grid[:, 1:] + grid[:, :-1]) / 2
    width = np.diff(edges)
    # w d(lambda) = t / (1 - t) pi(t) |d lambda / dt| dt = 2 pi(t) / (1 - t)^2 dt: a Stieltjes sum over the CDF
    return {"density_lambda": mass.sum(1) / width, "effective": (2 / (1 - mid) ** 2 * mass).sum(1) / width,
            "density_t": np.diff(cdf(np.clip(t_edges, 0, 1))) / np.diff(t_edges)}


def _bin_mean(fn, edges: np.ndarray, k: int = 200) -> np.ndarray:
    """The mean of fn over each bin (midpoint rule with k points): what a histogram of its density shows."""
    x = edges[:-1, None] + (np.arange(k) + 0.5)[None] / k * np.diff(edges)[:, None]
    return fn(x).mean(1)


def deviation(curves: dict, min_share: float = 0.01) -> float | None:
    """The largest relative gap between the measured and the paper's effective weight over the bins holding at least
    `min_share` of the draws (None where the paper gives no closed form)."""
    if curves["paper_effective"] is None:
        return None
    n = curves["count"].sum()
    keep = curves["count"] >= min_share * n
    got, want = curves["effective"][keep], curves["paper_effective"][keep]
    return float(np.abs(got / got.sum() / (want / want.sum()) - 1).max())


# --- the paper's closed forms -------------------------------------------------------------------------------------

def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _unshift(t, alpha: float):
    """The draw t_n that the Sec. 5.3 shift maps to t (the inverse of t_m = alpha t_n / (1 + (alpha - 1) t_n)) and
    dt_n/dt_m."""
    tn = t / (alpha - (alpha - 1) * t)
    return tn, alpha / (alpha - (alpha - 1) * t) ** 2


def _mode_inverse(t, s: float):
    """u with f_mode(u) = t, f_mode(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u) decreasing (Sec. 3.1), by bisection."""
    lo, hi = np.zeros_like(t), np.ones_like(t)
    for _ in range(60):
        u = (lo + hi) / 2
        f = 1 - u - s * (np.cos(np.pi * u / 2) ** 2 - 1 + u)
        lo, hi = np.where(f > t, u, lo), np.where(f > t, hi, u)
    return (lo + hi) / 2


def rf_cdf(scheme: str, params: dict):
    """P(T <= t) of an rf density (Sec. 3.1), unshifted."""
    from scipy.special import ndtr  # deferred: scipy (~0.3 s), only the rf curves need it

    if scheme == "lognorm":
        return lambda t: ndtr((np.log(np.clip(t, 1e-300, None) / np.clip(1 - t, 1e-300, None)) - params["m"])
                              / params["s"])
    if scheme == "mode":
        return lambda t: 1 - _mode_inverse(t, params["s"])
    if scheme == "cosmap":
        return lambda t: 2 / np.pi * np.arctan(t / np.clip(1 - t, 1e-300, None))
    return lambda t: np.clip(t, 0, 1)


def paper_cdf_t(f: Formulation):
    """The paper's CDF of training t (rf variants, with the training shift), else None."""
    if f.family != "rf":
        return None
    cdf, alpha = rf_cdf(f.spec.scheme, f.spec.kwargs), getattr(f, "shift", 1.0)
    return cdf if alpha == 1.0 else (lambda t: cdf(_unshift(t, alpha)[0]))


def paper_density_lambda(f: Formulation):
    """The paper's density of lambda = 2 log(a / b) of the training draws for the schedules of the other families
    (rf: through `paper_cdf_t`), where the paper defines one."""
    name = f.name
    if name in ("eps/cos", "v/cos", "edm/cos"):  # uniform t on the cosine schedule
        return lambda lam: 1 / np.cosh(lam / 2) / (2 * math.pi)
    if name == "edm/rf":  # uniform t on the rf schedule
        return lambda lam: np.cosh(lam / 4) ** -2 / 8
    if f.family == "edm":  # ln sigma ~ N(P_mean, P_std^2), lambda = -2 ln sigma
        pm, ps = f.spec.params
        return lambda lam: np.exp(-((lam + 2 * pm) ** 2) / (8 * ps * ps)) / (2 * ps * math.sqrt(2 * math.pi))
    return None


def paper_weight(f: Formulation):
    """The paper's w(lambda) (Sec. 2) of the other families, up to a constant, else None (rf: w = t / (1 - t) pi(t),
    Sec. 3.1, integrated through `paper_cdf_t`)."""
    name = f.name
    if name == "eps/cos":
        return lambda lam: 1 / np.cosh(lam / 2)
    if name == "v/cos":
        return lambda lam: np.exp(-lam / 2)
    edm = lambda lam: np.exp(-lam) + SIGMA_DATA**2  # noqa: E731 (EDM's loss weight over lambda, Karras et al. 2022)
    if f.family == "edm":
        p = paper_density_lambda(f)
        return lambda lam: p(lam) * edm(lam)
    return None
