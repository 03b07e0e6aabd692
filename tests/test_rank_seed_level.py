"""The bootstrap's seed level (`analysis.seed_level`): pooled over the variants, it gives the difference of two
variants' means the spread it has (tau^2 / K + v / K each), whether the training seeds add nothing or dominate; it
recovers the seed variance it was given, and with one seed there is none."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.confidence import bootstrap
from tests.synthetic_evidence import synthetic

NOISE, N, K = 0.05, 50, 2  # the synthetic samples' own CLIP noise, prompts, training seeds per variant


def _spread(ratio: float, variants: int = 300, b: int = 200):
    """(bootstrap sd, analytic sd) of the CLIP difference of two equal variants' means, the bootstrap's variance
    averaged over `variants` / 2 disjoint pairs: the pooled seed variance rests on `variants` (K - 1) degrees of
    freedom (its relative sd is about sqrt(2 / 300) = 8%, 4% on an sd), the bootstrap's own error on B = 200 is
    averaged away over the pairs."""
    sampling = NOISE ** 2 / N  # a run's CLIP score: its samples' own noise (the prompt effect is common)
    tau = np.sqrt(ratio * sampling) / 0.1  # a seed moves quality by tau, CLIP by 0.1 tau
    df, banks = synthetic({f"v{i:03d}": 0.5 for i in range(variants)}, seeds=K, n=N, d=2, tau=tau,
                          settings=[("ema", 50, 5.0)], noise=NOISE, rng_seed=3)
    c = bootstrap(df, banks, b=b)
    clip = c.values[0, :, :, c.metrics.index("clip_score")]  # (B, V)
    d = clip[:, 0::2] - clip[:, 1::2]
    analytic = 2 * ((0.1 * tau) ** 2 / K + sampling / K)
    return float(np.sqrt(d.var(0, ddof=1).mean())), float(np.sqrt(analytic)), c


@pytest.mark.parametrize("ratio", [0.0, 20.0])
def test_the_spread_of_a_difference_is_its_analytic_spread(ratio):
    """Seeds adding nothing (ratio 0) and seeds dominating (seed variance 20 times a run's sampling variance): the
    old seed resampling gave 1.41x and 0.76x at K = 2 (it counted each run's sampling noise twice and resampled each
    variant's two seeds alone)."""
    boot, analytic, _ = _spread(ratio)
    assert boot == pytest.approx(analytic, rel=0.10)


def test_the_pooled_seed_variance_is_the_one_given():
    _, _, c = _spread(20.0)
    v = c.seed_variance.set_index("metric").loc["clip_score"]
    assert v["df"] == 300 * (K - 1)
    assert v["tau2"] == pytest.approx(20 * NOISE ** 2 / N, rel=0.25)  # 2.6 sd of its chi^2(300) error
    assert v["sampling"] == pytest.approx(NOISE ** 2 / N, rel=0.1)


def test_one_seed_has_no_seed_level():
    c = bootstrap(*synthetic({f"v{i}": i / 10 for i in range(4)}, n=50), b=50)
    assert c.seed_variance.empty and c.seeds == {f"v{i}": 1 for i in range(4)}


@pytest.mark.parametrize("ratio", [0.0, 20.0])
def test_mixed_seed_counts_give_each_mean_its_own_spread(ratio):
    """Variants with 3 seeds beside variants with 2 (a sweep whose third seed is half done): the difference of a
    3-seed and a 2-seed variant's means has spread sqrt(tau^2 (1/3 + 1/2) + v (1/3 + 1/2)), the seed variance pooled
    over both kinds on sum(K - 1) degrees of freedom."""
    sampling = NOISE ** 2 / N
    tau = np.sqrt(ratio * sampling) / 0.1
    df, banks = synthetic({f"v{i:03d}": 0.5 for i in range(300)}, seeds=3, n=N, d=2, tau=tau,
                          settings=[("ema", 50, 5.0)], noise=NOISE, rng_seed=5)
    odd = df["variant"].str[1:].astype(int) % 2 == 1
    df = df[~(odd & (df["seed"] == 2))]  # odd variants: two seeds; even: three
    c = bootstrap(df, {r: banks[r] for r in set(df["run_dir"])}, b=200)
    assert c.seed_variance["df"].iloc[0] == 150 * 2 + 150 * 1
    clip = c.values[0, :, :, c.metrics.index("clip_score")]  # (B, V), variants sorted: v000 (3), v001 (2), ...
    d = clip[:, 0::2] - clip[:, 1::2]
    analytic = np.sqrt(((0.1 * tau) ** 2 + sampling) * (1 / 3 + 1 / 2))
    assert float(np.sqrt(d.var(0, ddof=1).mean())) == pytest.approx(analytic, rel=0.10)
