"""CLIP score and Frechet distance on evaluator features (Sec. 5.1 of the paper: both on CLIP-L/14), and two kernel
distances beside them (KID, CMMD: `mmd2`); the metrics' registry is `rfsweep.metrics`.

Features are the evaluator's L2-normalised embeddings, so the FID here lives on the unit sphere: its
values are far smaller than Inception FIDs (the paper does not say whether it normalised; we do, as
clean-fid's CLIP FID does). All statistics are float64.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance


def clip_score(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Mean cosine similarity of paired rows; image_features, text_features: (B, d)."""
    if image_features.shape != text_features.shape:
        raise ValueError(f"paired features differ in shape: {tuple(image_features.shape)} vs "
                         f"{tuple(text_features.shape)}")
    i = nn.functional.normalize(image_features.double(), dim=-1)
    t = nn.functional.normalize(text_features.double(), dim=-1)
    return float((i * t).sum(-1).mean())


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu: (d,), sigma: (d, d)) of features (N, d), float64, unbiased covariance as in torchmetrics."""
    f = _float64(features)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"feature_stats needs (N >= 2, d) features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _float64(features) -> np.ndarray:
    return np.asarray(features.detach().cpu().double() if isinstance(features, torch.Tensor) else features, np.float64)


# Kernels of (a.b, |a|^2, |b|^2, d), broadcast: a Gram block or, with a.b = |a|^2 = |b|^2, its diagonal.
CMMD_SIGMA, CMMD_SCALE = 10.0, 1000.0  # google-research/cmmd distance.py: _SIGMA = 10, _SCALE = 1000


def polynomial_kernel(dot, sq_a, sq_b, d: int):
    """KID's kernel (Binkowski et al. 2018; torchmetrics, torch-fidelity): k(x, y) = (x.y / d + 1)^3."""
    return (dot / d + 1.0) ** 3


def gaussian_kernel(dot, sq_a, sq_b, d: int):
    """CMMD's kernel (Jayasumana et al. 2024): k(x, y) = exp(-|x - y|^2 / (2 sigma^2)), sigma = 10."""
    return np.exp(-np.maximum(sq_a + sq_b - 2 * dot, 0.0) / (2 * CMMD_SIGMA**2))


_CHUNK = 1 << 22  # Gram entries per block: 32 MB of float64, whatever the reference set's size


def kernel_sums(a, b, kernel) -> np.ndarray:
    """sum_l k(a_i, b_l) per row of a (n,), in float64 row blocks (never the whole n x m Gram matrix)."""
    a, b = _float64(a), _float64(b)
    sq_a, sq_b = (a * a).sum(1), (b * b).sum(1)
    step = max(1, _CHUNK // max(len(b), 1))
    return np.concatenate([kernel(a[i:i + step] @ b.T, sq_a[i:i + step, None], sq_b[None], a.shape[1]).sum(1)
                           for i in range(0, len(a), step)] or [np.zeros(0)])


def _self_sums(x, kernel) -> np.ndarray:
    """sum_{j != i} k(x_i, x_j) per row (n,)."""
    x = _float64(x)
    sq = (x * x).sum(1)
    return kernel_sums(x, x, kernel) - kernel(sq, sq, sq, x.shape[1])


_SELF_MEANS: dict = {}  # (kernel, shape, digest) -> mean_{l != l'} k(y_l, y_l'): the reference set's term, once


def _self_mean(y: np.ndarray, kernel) -> float:
    key = (kernel.__name__, y.shape, hashlib.blake2b(y.tobytes(), digest_size=16).digest())
    if key not in _SELF_MEANS:
        if len(_SELF_MEANS) >= 8:
            _SELF_MEANS.pop(next(iter(_SELF_MEANS)))
        _SELF_MEANS[key] = float(_self_sums(y, kernel).sum() / (len(y) * (len(y) - 1)))
    return _SELF_MEANS[key]


def mmd2(x, y, kernel) -> float:
    """The unbiased squared MMD (U-statistic) of samples x (N, d) and references y (M, d) over the full sets, float64:
    sum_{i != j} k(x_i, x_j) / (N (N - 1)) + sum_{l != l'} k(y_l, y_l') / (M (M - 1)) - 2 sum_{i,l} k(x_i, y_l) / (N M).
    Deterministic (no random subsets); for N = M it is torchmetrics' `maximum_mean_discrepancy`."""
    x, y = _float64(x), _float64(y)
    if x.ndim != 2 or y.ndim != 2 or len(x) < 2 or len(y) < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd2 needs (N >= 2, d) and (M >= 2, d) features, got {x.shape} and {y.shape}")
    n = len(x)
    return float(_self_sums(x, kernel).sum() / (n * (n - 1)) + _self_mean(y, kernel)
                 - 2 * kernel_sums(x, y, kernel).mean() / len(y))


def mmd2_influence(x, y, kernel) -> np.ndarray:
    """d mmd2 / d w_i (N,) for the weight moved onto sample i, to first order: with the weighted statistic
    sum_{i != j} w_i w_j k_ij / sum_{i != j} w_i w_j + mean k(y, y') - 2 sum_i w_i mean_l k(x_i, y_l) (sum w = 1),
    2 [sum_{j != i} k(x_i, x_j) / (N - 1) - mean_l k(x_i, y_l)], centred."""
    g = 2 * (_self_sums(x, kernel) / (len(x) - 1) - kernel_sums(x, y, kernel) / len(y))
    return g - g.mean()


def kid(features, reference) -> float:
    """KID = mmd2 with the polynomial kernel (x.y / d + 1)^3 over the full sets (unbiased)."""
    return mmd2(features, reference, polynomial_kernel)


def cmmd(features, reference) -> float:
    """CMMD = 1000 mmd2 with the Gaussian kernel, sigma = 10 (Jayasumana et al. 2024). The published code
    (google-research/cmmd) takes the biased V-statistic (means over the Gram matrices with their diagonals); this is
    the unbiased U-statistic, which differs from it by O(1 / N)."""
    return CMMD_SCALE * mmd2(features, reference, gaussian_kernel)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) in float64.

    Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}: the inner matrix is symmetric PSD, so a symmetric
    eigensolver gives the trace without the complex parts scipy's sqrtm produces for near-singular S.
    Rounding can make identical statistics score -1e-8; the result is clipped at 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return max(0.0, float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt))


class ImageFeatures(nn.Module):
    """An evaluator's image tower as the `feature=` module torchmetrics' FID accepts."""

    def __init__(self, evaluator):
        super().__init__()
        self.evaluator = evaluator
        self.num_features = int(evaluator.dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [-1, 1] -> (B, d)
        return self.evaluator.encode_images(images).double()



FID_INF_POINTS = 15  # Chong & Forsyth's number of sample sizes
FID_INF_MIN_SAMPLES = 10


def fid_inf(features, mu_r: np.ndarray, sigma_r: np.ndarray, smallest: float = 0.2, seed: int = 0) -> float:
    """FID_inf (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to find them"): FID_N
    is FID_inf + k / N to first order, with a k of each generator, so a run's point FID carries its own finite-N bias.
    FID of nested random subsets of N_i samples, N_i at FID_INF_POINTS sizes evenly spaced in 1 / N from
    max(`smallest` x N, 2 d) to N, fitted by least squares in 1 / N; the intercept. The subsets are a fixed function
    of `seed` (a deterministic metric); the reference statistics are taken as exact (every run shares them).

    The line holds only where the subsets are well above the feature dimension d: below 2 d samples FID_N bends away
    from it (at d = 768, N = 1000, the paper's protocol, a fit over 200-1000 samples leaves 96 of a 176 bias). So it
    is NaN where N < 4 d (the smallest subset would exceed N / 2) or N < FID_INF_MIN_SAMPLES: KID and CMMD, unbiased
    at any N, are the metrics for that regime."""
    x = _float64(features)
    n, d = x.shape
    low = max(int(np.ceil(smallest * n)), 2 * d)
    if n < FID_INF_MIN_SAMPLES or low > n / 2:
        return float("nan")
    sizes = np.unique(np.round(1 / np.linspace(1 / low, 1 / n, FID_INF_POINTS)).astype(int))
    order = np.random.default_rng(seed).permutation(n)
    values = [frechet_distance(*feature_stats(x[order[:k]]), mu_r, sigma_r) for k in sizes]
    slope, intercept = np.polyfit(1 / sizes, values, 1)
    return float(intercept)


def torchmetrics_fid(evaluator) -> FrechetInceptionDistance:
    """torchmetrics' FID over the evaluator's features; update(images in [-1, 1], real=...) as usual.

    Used to cross-check `frechet_distance`, and handy when both image sets are at hand; the sweep itself
    uses cached reference statistics (`reference.py`) with `frechet_distance`.
    """
    return FrechetInceptionDistance(feature=ImageFeatures(evaluator), normalize=True)

