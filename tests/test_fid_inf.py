"""FID_inf (Chong & Forsyth 2020) as a registered metric: the extrapolation to N -> infinity removes most of the
finite-N bias that makes a run's point FID depend on its own k in FID_N = FID_inf + k / N."""

from __future__ import annotations

import numpy as np

from rfsweep.evaluation.statistics import feature_stats, fid_inf, frechet_distance
from rfsweep.metrics import METRICS, ranked_names


def test_fid_inf_removes_the_finite_n_bias():
    """Gaussian features N(0, diag(g^2)) against an exact N(0, I) reference: the truth is sum (g - 1)^2. Over 12
    samples of N = 400 at d = 16, FID_N is biased upward by about tr(S) d / N; FID_inf's mean lies within a fifth of
    that bias of the truth."""
    d, n = 16, 400
    g = np.linspace(0.8, 1.4, d)
    truth = float(((g - 1) ** 2).sum())
    mu_r, sigma_r = np.zeros(d), np.eye(d)
    point, inf = [], []
    for seed in range(12):
        x = np.random.default_rng(seed).normal(size=(n, d)) * g
        point.append(frechet_distance(*feature_stats(x), mu_r, sigma_r))
        inf.append(fid_inf(x, mu_r, sigma_r))
    bias_n, bias_inf = np.mean(point) - truth, np.mean(inf) - truth
    assert bias_n > 0.05
    assert abs(bias_inf) < 0.2 * bias_n


def test_fid_inf_is_deterministic_and_nan_where_the_line_does_not_hold():
    """A smoke-test evaluation of 8 samples, and N < 4 d (the paper's d = 768 at N = 1000, here d = 64 at N = 200),
    get NaN, not an error that would fail the run nor an extrapolation off the line."""
    x = np.random.default_rng(0).normal(size=(200, 64))
    assert np.isnan(fid_inf(x, np.zeros(64), np.eye(64)))
    x = x[:50, :4]
    assert fid_inf(x, np.zeros(4), np.eye(4)) == fid_inf(x, np.zeros(4), np.eye(4))
    assert np.isnan(fid_inf(x[:8], np.zeros(4), np.eye(4)))


def test_fid_inf_at_d_64_n_1000():
    """Where N = 16 d: most of FID_N's bias goes (truth 0.64; FID_N about 1.8)."""
    d, n = 64, 1000
    g = np.ones(d)
    g[:16] = 1.2
    x = np.random.default_rng(3).normal(size=(n, d)) * g
    truth = float(((g - 1) ** 2).sum())
    point = frechet_distance(*feature_stats(x), np.zeros(d), np.eye(d))
    assert abs(fid_inf(x, np.zeros(d), np.eye(d)) - truth) < 0.3 * (point - truth)


def test_fid_inf_is_registered_and_not_ranked_by_default():
    assert METRICS["fid_inf"].direction == "min" and "fid_inf" not in ranked_names()
