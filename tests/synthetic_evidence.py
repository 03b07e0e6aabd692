"""Evidence banks with a known truth, for the bootstrap's tests and benchmark: each variant has a quality q; its
samples' CLIP similarities have mean 0.2 + 0.1 q and its features are the reference distribution shifted by
(1 - q) along one direction, so both metrics order the variants by q (a larger q is better in each, and Pareto
rank equals the place by q). Sample j of every run shares a prompt effect (common random numbers: the design that
pairs the comparison); each training seed moves a variant's quality by `tau`. `World`: a world where the metrics
disagree and FID is driven by covariance differences, with its truth."""

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


class World:
    """A world with a known truth for the coverage of the rank-confidence bootstrap, where the two metrics disagree
    and FID is driven by covariance differences (`scripts/coverage_check.py`, `tests/test_rank_sets.py`).

    Per variant j and setting s a CLIP mean `clip[j, s]` and a covariance gain `gain[j, s]`: sample i of a run has
    CLIP similarity clip + seed effect + prompt effect_i + N(0, noise^2), and features x_i = G (rho z_i + sqrt(1 -
    rho^2) e_i) with z_i the prompt's features (shared by every run: common random numbers), G = diag(gain on the
    first `k` dimensions, 1 + offset + seed effect on the next, 1 elsewhere); the reference is N(0, I). FID then
    grows with |gain - 1| (no mean shift at all), and a seed moves it through the offset dimension by about the same
    amount for every variant. `tau_clip`, `tau_gain`: the seed effects' standard deviations."""

    def __init__(self, clip: np.ndarray, gain: np.ndarray, settings=SETTINGS, n: int = 200, d: int = 8, k: int = 3,
                 noise: float = 0.05, rho: float = 0.6, offset: float = 0.5, tau_clip: float = 0.0,
                 tau_gain: float = 0.0, rng_seed: int = 0):
        self.clip, self.gain = np.asarray(clip, np.float64), np.asarray(gain, np.float64)  # (V, S)
        self.variants = [f"v{j:02d}" for j in range(len(self.clip))]
        self.settings, self.n, self.d, self.k = list(settings), n, d, k
        self.noise, self.rho, self.offset, self.tau_clip, self.tau_gain = noise, rho, offset, tau_clip, tau_gain
        ref = np.random.default_rng(rng_seed).normal(size=(4 * n, d))
        self.reference = ref.astype(np.float16)
        self.ref_stats = feature_stats(self.reference.astype(np.float32))

    def _features(self, rng, j: int, s: int, z: np.ndarray, seed_gain: float) -> np.ndarray:
        g = np.ones(self.d)
        g[: self.k] = self.gain[j, s]
        g[self.k] = 1 + self.offset + seed_gain
        e = rng.normal(size=z.shape)
        return (self.rho * z + np.sqrt(1 - self.rho ** 2) * e) * g

    def _fid(self, x: np.ndarray) -> float:
        return frechet_distance(*feature_stats(x.astype(np.float16).astype(np.float32)), *self.ref_stats)

    def evidence(self, seeds: int = 1, rng_seed: int = 0):
        """(results rows, banks by run folder) of one sweep of this world."""
        rng = np.random.default_rng(rng_seed)
        n, rows, banks = self.n, [], {}
        prompt_effect = rng.normal(size=n) * self.noise
        z = rng.normal(size=(n, self.d))
        for j, variant in enumerate(self.variants):
            for seed in range(seeds):
                c_seed, g_seed = rng.normal() * self.tau_clip, rng.normal() * self.tau_gain
                run = f"/world/{variant}/seed{seed}"
                bank = EvidenceBank("synthetic", 100, torch.from_numpy(self.reference), {})
                for s, (w, steps, cfg) in enumerate(self.settings):
                    sim = self.clip[j, s] + c_seed + prompt_effect + rng.normal(size=n) * self.noise
                    feats = self._features(rng, j, s, z, g_seed)
                    e = SampleEvidence(torch.from_numpy(feats).half(), torch.from_numpy(sim).float(),
                                       torch.arange(n), torch.arange(n))
                    bank.add(w, steps, cfg, e)
                    rows.append({"variant": variant, "family": "rf", "dataset": "a", "backbone": "mlp", "weights": w,
                                 "steps": steps, "cfg": cfg, "clip_score": float(e.similarity.double().mean()),
                                 "fid": self._fid(feats), "n_samples": n, "ckpt_step": 100, "val_loss": 0.1,
                                 "seed": seed, "run_dir": run, "evaluator": "synthetic"})
                banks[run] = bank
        return pd.DataFrame(rows), banks

    def truth(self, draws: int = 300, rng_seed: int = 12345) -> np.ndarray:
        """(V, S, 2): each variant's expected CLIP score and expected FID at this world's N (over prompts, samples
        and seeds), the FID by Monte Carlo over `draws` runs (its standard error is about 0.1 / sqrt(draws) of the
        run-to-run spread)."""
        rng = np.random.default_rng(rng_seed)
        out = np.zeros((*self.clip.shape, 2))
        out[..., 0] = self.clip
        for j in range(len(self.clip)):
            for s in range(len(self.settings)):
                out[j, s, 1] = np.mean([self._fid(self._features(rng, j, s, rng.normal(size=(self.n, self.d)),
                                                                 rng.normal() * self.tau_gain))
                                        for _ in range(draws)])
        return out

    def sampling_variances(self, j: int = 0, s: int = 0, draws: int = 300, rng_seed: int = 7) -> np.ndarray:
        """(2,): the variance of the part of one run's CLIP score and FID that another run on the same prompts does
        not share (half the variance of the difference of two such runs of one variant and seed)."""
        rng = np.random.default_rng(rng_seed)
        diffs = []
        for _ in range(draws):
            z = rng.normal(size=(self.n, self.d))
            diffs.append(self._fid(self._features(rng, j, s, z, 0.0)) - self._fid(self._features(rng, j, s, z, 0.0)))
        return np.array([self.noise ** 2 / self.n, np.var(diffs) / 2])


def true_places(values: np.ndarray, settings: list, column: str = "all") -> np.ndarray:
    """(V,) each variant's true place in Table 1's `column` from true values (V, S, 2) (CLIP up, FID down): Pareto
    ranks per setting, averaged over the column's settings, places with ties sharing the better one."""
    from analysis.ranking import pareto_ranks

    cols = [s for s, (_, steps, _) in enumerate(settings) if column == "all" or steps == int(column.split()[0])]
    score = np.mean([pareto_ranks(values[:, s], ["max", "min"]) for s in cols], 0)
    return 1 + (score[None, :] < score[:, None]).sum(-1)


# a run's unshared sampling variance in `coverage_world`: CLIP noise^2 / n; FID measured (`World.sampling_variances`),
# the mean over its 12 variants at 5 and 50 steps (0.005 for the best, 0.05 for the worst: FID is noisier far off)
SAMPLING = (0.05 ** 2 / 200, 0.025)


def coverage_world(ratio: float, V: int = 12) -> World:
    """The world of `scripts/coverage_check.py` with seed / sampling variance `ratio` in both metrics: V variants,
    CLIP means 0.005 apart in one order (1.4 sd of a run's own sampling noise), FID excesses 0.12 apart in a shuffled
    order (about 1.3 sd), each moved at 5 steps by a variant's own amount."""
    rng = np.random.default_rng(2026)
    order = rng.permutation(V)
    clip = 0.2 + 0.005 * np.arange(V)[:, None] + np.zeros((V, len(SETTINGS)))
    excess = 0.12 * order[:, None] + np.zeros((V, len(SETTINGS)))
    five = [s for s, (_, steps, _) in enumerate(SETTINGS) if steps == 5]
    clip[:, five] += rng.normal(size=(V, 1)) * 0.005
    excess[:, five] = np.abs(excess[:, five] + rng.normal(size=(V, 1)) * 0.12)
    # a seed gain g moves FID by (a + g)^2 (a = 0.5, the offset), whose variance 4 a^2 t^2 + 2 t^4 is set to ratio x
    # the FID sampling variance (a skewed seed effect, as real ones may be) x (1 + ratio / 20): FID's own sampling
    # variance grows with |a + g| too, by about that factor, so the ratio the sweep measures is about `ratio`
    a, target = 0.5, ratio * SAMPLING[1] * (1 + ratio / 20)
    tau_gain = np.sqrt((np.sqrt(16 * a ** 4 + 8 * target) - 4 * a ** 2) / 4)
    return World(clip, 1 + np.sqrt(excess / 3), offset=a, tau_clip=np.sqrt(ratio * SAMPLING[0]), tau_gain=tau_gain)
