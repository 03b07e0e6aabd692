"""Reference statistics of the held-out images, computed once per (evaluator, data set, split, resolution,
n, seed) and cached; and the real-data row, the floor under which FID differences mean nothing.

The paper takes prompts and reference images from COCO-2014 val (Sec. 5.1); rfsweep takes them from the
held-out `test` split. A cache file that cannot be read or does not match its key is recomputed with a
warning (writes are atomic, so such a file was damaged from outside, never half-written by us).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rfsweep.atomic import atomic_write
from rfsweep.data import build_dataset, default_cache_dir
from rfsweep.evaluation.bank import SampleEvidence, sample_evidence
from rfsweep.evaluation.statistics import clip_score, feature_stats
from rfsweep.metrics import Evidence, compute_metrics


@dataclass
class ReferenceStats:
    mu: np.ndarray  # (d,)
    sigma: np.ndarray  # (d, d)
    clip_score: float  # of the reference images with their own captions
    n: int  # images used (n requested, capped by the split's size)
    evaluator_id: str
    key: str
    features: np.ndarray | None = None  # (n, d) fp16: the images' features (the evidence bank keeps them)


def split_items(dataset: str, split: str, resolution: int, n: int, seed: int = 0, data_path: str | None = None):
    """The first min(n, len) items of a split: images (N, 3, H, W) in [-1, 1] and captions."""
    ds = build_dataset(dataset, split, resolution=resolution, seed=seed, path=data_path)
    items = [ds[i] for i in range(min(n, len(ds)))]
    return torch.stack([it["image"] for it in items]), [it["caption"] for it in items]


def compute_stats(evaluator, images: torch.Tensor, captions: list[str], key: str = "") -> ReferenceStats:
    feats = evaluator.encode_images(images)
    mu, sigma = feature_stats(feats)
    cs = clip_score(feats, evaluator.encode_texts(captions))
    return ReferenceStats(mu, sigma, cs, len(images), evaluator.id, key,
                          np.asarray(feats.detach().cpu(), np.float16))


def _save(path: Path, stats: ReferenceStats) -> None:
    with atomic_write(path) as f:
        np.savez(f, **asdict(stats))


def _load(path: Path, key: str, dim: int) -> ReferenceStats | None:
    try:
        with np.load(path) as z:
            stats = ReferenceStats(z["mu"], z["sigma"], float(z["clip_score"]), int(z["n"]),
                                   str(z["evaluator_id"]), str(z["key"]),
                                   z["features"] if "features" in z.files else None)
    except Exception as e:  # truncated, not an npz, missing fields
        warnings.warn(f"reference cache {path} is unreadable ({type(e).__name__}: {e}); recomputing", stacklevel=3)
        return None
    if stats.features is None:  # written before the evidence bank kept the reference features: once more
        return None
    if stats.key != key or stats.mu.shape != (dim,) or stats.sigma.shape != (dim, dim):
        warnings.warn(f"reference cache {path} does not match key {key!r} / dim {dim}; recomputing", stacklevel=3)
        return None
    return stats


def reference_stats(evaluator, dataset: str, split: str = "test", resolution: int = 8, n: int = 1000,
                    seed: int = 0, cache_dir: str | Path | None = None,
                    data_path: str | None = None) -> ReferenceStats:
    """Feature statistics of the first n images of `split`, from the cache or computed and cached.
    `data_path`: the folder of a pre-encoded data set, part of the key (a digest of it in the file name)."""
    key = name = f"{evaluator.id}|{dataset}|{split}|r{resolution}|n{n}|s{seed}"
    if data_path is not None:
        folder = str(Path(data_path).resolve())
        key, name = f"{key}|{folder}", f"{name}|{hashlib.sha1(folder.encode()).hexdigest()[:12]}"
    path = Path(cache_dir or default_cache_dir()) / "reference" / (re.sub(r"[^\w.=-]+", "_", name) + ".npz")
    if path.is_file() and (stats := _load(path, key, evaluator.dim)) is not None:
        return stats
    stats = compute_stats(evaluator, *split_items(dataset, split, resolution, n, seed, data_path), key=key)
    _save(path, stats)
    return stats


def real_reference_row(evaluator, ref: ReferenceStats, dataset: str, resolution: int = 8, n: int = 1000,
                       seed: int = 0, split: str = "val", data_path: str | None = None) -> dict:
    """Every registered metric of n held-out real images (`val`, with their own captions) against the reference
    (`test`) statistics: what a perfect generator would score with n samples. Same keys as an `evaluate` row."""
    return real_reference(evaluator, ref, dataset, resolution, n, seed, split, data_path)[0]


def real_reference(evaluator, ref: ReferenceStats, dataset: str, resolution: int = 8, n: int = 1000, seed: int = 0,
                   split: str = "val", data_path: str | None = None) -> tuple[dict, SampleEvidence]:
    """`real_reference_row` and the real images' evidence for the bank (`EvidenceBank.real`: each image's features
    and similarity to its own caption, its index as the prompt, noise seed -1)."""
    images, captions = split_items(dataset, split, resolution, n, seed, data_path)
    image_features, text_features = evaluator.encode_images(images), evaluator.encode_texts(captions)
    evidence = Evidence(image_features, text_features, ref.mu, ref.sigma, ref.features)
    row = {"weights": "real", "steps": 0, "cfg": 0.0, **compute_metrics(evidence), "n_samples": len(images)}
    return row, sample_evidence(image_features, text_features, len(images), [-1] * len(images))
