"""What the README says of the rank-confidence bootstrap, measured (`python scripts/bootstrap_checks.py [SWEEP]`):
1. coverage: on evidence with a known truth (tests/synthetic_evidence.py: twelve variants a small step apart, 25
   repetitions, B = 400), how often each variant's 95% place interval holds its true place, and how wide it is;
2. pairing: the width of the 95% interval of one rank difference with the shared prompt draw and with independent
   draws (B = 1000);
3. with SWEEP (a sweep with evidence banks): how closely FID's first-order resampling follows the FID recomputed
   exactly from the resampled features' weighted statistics, for the first 16 runs of each data set at 25 steps,
   cfg 5, EMA weights (300 resamples each).
About 2 minutes on 2 CPU cores (with SWEEP, one more). The coverage in the regimes where seeds dominate and the
metrics disagree is measured by `scripts/coverage_check.py` (docs/results/coverage.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.confidence import bootstrap  # noqa: E402
from analysis.evidence import fid_influence  # noqa: E402
from rfsweep.evaluation.statistics import feature_stats, frechet_distance  # noqa: E402
from tests.synthetic_evidence import synthetic  # noqa: E402


def coverage() -> None:
    for step in (1 / 150, 1 / 400):
        quality = {f"v{i:02d}": i * step for i in range(12)}
        truth = {v: 12 - i for i, v in enumerate(quality)}
        for seeds, tau in ((1, 0.0), (3, 0.005)):
            covered, width = [], []
            for rep in range(25):
                df, banks = synthetic(quality, seeds=seeds, tau=tau, rng_seed=100 + rep)
                t = bootstrap(df, banks, b=400, seed=rep).table()
                covered += [lo <= truth[v] <= hi for v, lo, hi in zip(t["variant"], t["rank_lo"], t["rank_hi"])]
                width += list(t["rank_hi"] - t["rank_lo"])
            print(f"coverage: step {step:.4f}, {seeds} seed(s): {np.mean(covered):.3f} of true places inside, mean "
                  f"width {np.mean(width):.2f} places")


def pairing() -> None:
    df, banks = synthetic({"a": 0.50, "b": 0.52, "c": 0.2, "d": 0.8}, n=200)
    for paired in (True, False):
        c = bootstrap(df, banks, b=1000, paired=paired)
        d = c.scores["all"][:, c.variants.index("a")] - c.scores["all"][:, c.variants.index("b")]
        print(f"pairing: {'shared' if paired else 'independent'} draws: 95% width of a - b "
              f"{np.quantile(d, 0.975) - np.quantile(d, 0.025):.2f}")


def fid_linearity(sweep: Path) -> None:
    from analysis.collect import collect
    from analysis.evidence import load_banks

    rows, _ = collect(sweep)
    rows = rows[(rows["weights"] == "ema") & (rows["steps"] == 25) & ((rows["cfg"] - 5.0).abs() < 1e-9)]
    banks = load_banks(rows)
    rng = np.random.default_rng(0)
    for ds, part in rows.groupby("dataset"):
        corr, ratio = [], []
        for run in list(part["run_dir"])[:16]:
            bank = banks[run]
            x = bank.settings[("ema", 25, 5.0)].features.float().numpy().astype(np.float64)
            ref = feature_stats(bank.reference.float().numpy())
            n = len(x)
            infl = fid_influence(x, *ref)
            base = frechet_distance(*feature_stats(x), *ref)
            counts = rng.multinomial(n, np.full(n, 1 / n), size=300).astype(float)
            exact = []
            for c in counts:
                w = c / c.sum()
                mu = w @ x
                xc = x - mu
                exact.append(frechet_distance(mu, (xc * w[:, None]).T @ xc * n / (n - 1), *ref))
            linear = base + counts @ infl / n
            corr.append(np.corrcoef(exact, linear)[0, 1])
            ratio.append(np.std(exact) / np.std(linear))
        print(f"FID linearity: {ds} ({len(corr)} runs, n={n}, d={x.shape[1]}): correlation with the exact resampled "
              f"FID median {np.median(corr):.2f} (min {np.min(corr):.2f}); exact sd / linear sd median "
              f"{np.median(ratio):.2f} (max {np.max(ratio):.2f})")


if __name__ == "__main__":
    coverage()
    pairing()
    if len(sys.argv) > 1:
        fid_linearity(Path(sys.argv[1]))
