"""Evidence banks with a known truth, for the bootstrap's tests and benchmark: each variant has a quality q; its
samples' CLIP similarities have mean 0.2 + 0.1 q and its features are the reference distribution shifted by
(1 - q) along one direction, so both metrics order the variants by q (a larger q is better in each, and Pareto
rank equals the place by q). Sample j of every run shares a prompt effect (common random numbers: the design that
pairs the comparison); each training seed moves a variant's quality by `tau`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from rfsweep.evaluation.bank import EvidenceBank, SampleEvidence
from rfsweep.evaluation.statistics import feature_stats, frechet_distance

SETTINGS = [("ema", 5, 5.0), ("ema", 50, 5.0), ("raw", 5, 5.0), ("raw", 50, 5.0)]


def synthetic(quality: dict[str, float], seeds: int = 1, n: int = 200, d: int = 16, datasets=("a",),
              settings=SETTINGS, tau: float = 0.0, noise: float = 0.05, shift: float = 0.1, rng_seed: int = 0):
    """(results rows, banks by run folder)."""
    rng = np.random.default_rng(rng_seed)
    reference = rng.normal(size=(n, d)) * 0.1
    ref_mu, ref_sigma = feature_stats(reference)
    direction = np.eye(d)[0]
    rows, banks = [], {}
    for ds in datasets:
        prompt_effect = rng.normal(size=n) * noise  # shared by every run: the samples of one prompt
        prompt_feats = rng.normal(size=(n, d)) * 0.1
        for variant, q in quality.items():
            for s in range(seeds):
                qs = q + tau * rng.normal()
                run = f"/synthetic/{ds}/{variant}/seed{s}"
                bank = EvidenceBank("synthetic", 100, torch.from_numpy(reference).half(), {})
                for w, steps, cfg in settings:
                    sim = 0.2 + 0.1 * qs + prompt_effect + rng.normal(size=n) * noise
                    feats = prompt_feats + rng.normal(size=(n, d)) * 0.02 + shift * (1 - qs) * direction
                    e = SampleEvidence(torch.from_numpy(feats).half(), torch.from_numpy(sim).float(),
                                       torch.arange(n), torch.arange(n))
                    bank.add(w, steps, cfg, e)
                    f16 = e.features.float().numpy()
                    rows.append({"variant": variant, "family": "rf", "dataset": ds,
                                 "backbone": "mlp", "weights": w, "steps": steps, "cfg": cfg,
                                 "clip_score": float(e.similarity.double().mean()),
                                 "fid": frechet_distance(*feature_stats(f16), *feature_stats(reference.astype(
                                     np.float16).astype(np.float32))),
                                 "n_samples": n, "ckpt_step": 100, "val_loss": 0.1, "seed": s, "run_dir": run,
                                 "evaluator": "synthetic"})
                banks[run] = bank
    del ref_mu, ref_sigma
    return pd.DataFrame(rows), banks
