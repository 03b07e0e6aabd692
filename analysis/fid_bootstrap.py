"""FID under a prompt draw, exactly, and what it shows about the bootstrap's FID path.

A prompt draw c (P,) gives sample i the weight w_i = c_{p(i)}; the run's mean and (unbiased, as `feature_stats`)
covariance are then mu = sum_i w_i x_i / n, S = (sum_i w_i x_i x_i^T - n mu mu^T) / (n - 1) with n = sum_i w_i, and
FID = |mu - mu_r|^2 + tr S + tr S_r - 2 sum sqrt(eig(S_r^1/2 S S_r^1/2)) (`exact_fid`). The bootstrap
(`analysis.confidence`) moves FID along its first-order path instead (`analysis.evidence.fid_influence`).

Measured against the truth (`scripts/fid_spread_check.py`: the spread of FID over fresh samples of the same
generator, and of the paired difference of two runs sharing their prompts), the exact replicates are the wrong
target: a draw with duplicated samples has fewer distinct ones, its covariance is noisier than a real sample's, and
FID's finite-N bias (Chong & Forsyth 2020: FID_N = FID_inf + k / N) then moves with the number of distinct samples,
which a real sweep of N samples never sees. The exact bootstrap is 1.8-2.8x too wide at d = 64, N = 200; the
first-order path, which has no such term, is 1.10-1.44x (conservative) at d = 64, N = 200 and 1000. So the bootstrap
keeps the first-order path, and this module is the reference it is checked against.
"""

from __future__ import annotations

import numpy as np


def exact_fid(c: np.ndarray, features, prompt, mu_r: np.ndarray, sigma_r: np.ndarray,
              sigma_r_sqrt: np.ndarray) -> np.ndarray:
    """(B,) the FID of a run's `features` (N, d) whose samples have prompts `prompt` (N,) under each prompt draw
    c (B, P): the Frechet distance of the reweighted statistics, one draw at a time (memory N x d)."""
    x = np.asarray(features, np.float64)
    w_all = np.asarray(c, np.float64)[:, np.asarray(prompt)]  # (B, N)
    out = np.empty(len(w_all))
    for b, w in enumerate(w_all):
        n = w.sum()
        mu = w @ x / n
        cov = ((x * w[:, None]).T @ x - n * np.outer(mu, mu)) / (n - 1)
        m = sigma_r_sqrt @ cov @ sigma_r_sqrt
        tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
        out[b] = ((mu - mu_r) ** 2).sum() + np.trace(cov) + np.trace(sigma_r) - 2 * tr_sqrt
    return out
