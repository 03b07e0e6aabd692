"""CLIP score and Frechet distance against closed forms and torchmetrics."""

import numpy as np
import pytest
import scipy.linalg
import torch

from rfsweep.evaluation.statistics import clip_score, feature_stats, frechet_distance, torchmetrics_fid


class PixelEvaluator:
    """Features = the raw (unnormalised) pixels of (B, 3, 1, 1) images: FID on known Gaussians."""

    id, dim = "pixels", 3

    def encode_images(self, images):
        return images.flatten(1)


def test_clip_score_is_mean_paired_cosine():
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    expected = torch.nn.functional.cosine_similarity(a, b).mean().item()
    assert clip_score(a, b) == pytest.approx(expected, abs=1e-6)
    assert clip_score(a, 3 * a) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        clip_score(a, b[:4])


def test_frechet_distance_exact_for_given_stats():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = (lambda a: a @ a.T)(rng.normal(size=(4, 4))), (lambda a: a @ a.T + np.eye(4))(rng.normal(size=(4, 4)))
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    d1, d2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 1.0])  # diagonal: sum (sqrt d1 - sqrt d2)^2
    assert frechet_distance(np.zeros(3), np.diag(d1), np.ones(3), np.diag(d2)) == pytest.approx(3 + 4 + 1 + 0.25)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_fid_of_gaussian_samples_matches_closed_form_and_torchmetrics():
    n, mu1, mu2 = 20000, torch.tensor([0.0, 1.0, -1.0]), torch.tensor([0.5, 1.0, 0.0])
    sd1, sd2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])
    x1 = (mu1 + sd1 * torch.randn(n, 3)).double()
    x2 = (mu2 + sd2 * torch.randn(n, 3)).double()
    closed = ((mu1 - mu2) ** 2).sum() + ((sd1 - sd2) ** 2).sum()  # = 1.25 + 0.25 + 1.0
    ours = frechet_distance(*feature_stats(x1), *feature_stats(x2))
    assert ours == pytest.approx(closed.item(), abs=0.06)
    fid = torchmetrics_fid(PixelEvaluator())
    fid.update(x1.view(n, 3, 1, 1), real=True)
    fid.update(x2.view(n, 3, 1, 1), real=False)
    assert fid.compute().item() == pytest.approx(ours, rel=1e-6)
