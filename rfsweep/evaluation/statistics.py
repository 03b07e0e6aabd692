"""CLIP score and Frechet distance on evaluator features (Sec. 5.1 of the paper: both on CLIP-L/14); the metrics'
registry is `rfsweep.metrics`.

Features are the evaluator's L2-normalised embeddings, so the FID here lives on the unit sphere: its
values are far smaller than Inception FIDs (the paper does not say whether it normalised; we do, as
clean-fid's CLIP FID does). All statistics are float64.
"""

from __future__ import annotations

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
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"feature_stats needs (N >= 2, d) features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


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


def torchmetrics_fid(evaluator) -> FrechetInceptionDistance:
    """torchmetrics' FID over the evaluator's features; update(images in [-1, 1], real=...) as usual.

    Used to cross-check `frechet_distance`, and handy when both image sets are at hand; the sweep itself
    uses cached reference statistics (`reference.py`) with `frechet_distance`.
    """
    return FrechetInceptionDistance(feature=ImageFeatures(evaluator), normalize=True)

