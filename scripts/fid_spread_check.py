"""The bootstrap's FID spread against the truth (`python scripts/fid_spread_check.py [REPS] [B] [dxN,...]`, default 200
fresh samples, B = 200 draws and the sizes 64x200,64x1000,768x1000; d = 64 takes about 4 minutes on 2 CPU cores,
d = 768 far longer).

Synthetic features: a run's samples are x_i = G (0.6 z_i + 0.8 e_i) with z_i its prompt's features (shared by every
run: the study's common prompts and noise), e_i its own, the reference N(0, I) (4N images) and G = diag(gain on the
first d / 4 dimensions, 1 elsewhere): gain 1 is a run as good as the reference (the best variants), larger gains
worse ones. Per (d, N) and run: the true standard deviation of FID_N over `REPS` fresh samples, and the mean over 3
samples of the bootstrap's, along the first-order path (`analysis.evidence.fid_influence`, what the bootstrap uses)
and exactly (`analysis.fid_bootstrap.exact_fid`); the same for the paired difference of the gain-1 and gain-1.2 runs
(fresh e for each, shared z), which is what the intervals of Table 1's places rest on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.evidence import fid_influence  # noqa: E402
from analysis.fid_bootstrap import exact_fid  # noqa: E402
from rfsweep.evaluation.statistics import _psd_sqrt, feature_stats  # noqa: E402

GAINS = (1.0, 1.2, 1.5)


def check(d: int, n: int, reps: int, b: int, rng_seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(rng_seed)
    mu_r, sigma_r = feature_stats(rng.normal(size=(4 * n, d)))
    ref = (mu_r, sigma_r, _psd_sqrt(sigma_r))
    one = np.ones((1, n))

    def run(z, gain):
        g = np.ones(d)
        g[: d // 4] = gain
        return (0.6 * z + 0.8 * rng.normal(size=(n, d))) * g

    def fid(x, c=one):
        return exact_fid(c, x, np.arange(n), *ref)

    def boot(xs):  # (first-order, exact) bootstrap draws of sum(sign * FID) over the runs xs, one shared prompt draw
        c = rng.multinomial(n, np.full(n, 1 / n), size=b).astype(np.float64)
        lin = sum(s * (c @ fid_influence(x, mu_r, sigma_r_sqrt=ref[2])) / n for s, x in xs)
        ex = sum(s * fid(x, c) for s, x in xs)
        return lin.std(ddof=1), ex.std(ddof=1)

    rows = []
    for gain in GAINS:
        true = np.std([fid(run(rng.normal(size=(n, d)), gain))[0] for _ in range(reps)], ddof=1)
        lin, ex = np.mean([boot([(1, run(rng.normal(size=(n, d)), gain))]) for _ in range(3)], 0)
        rows.append((f"gain {gain:g}", true, lin, ex))
    diffs = []
    for _ in range(reps):
        z = rng.normal(size=(n, d))
        diffs.append(fid(run(z, 1.0))[0] - fid(run(z, 1.2))[0])
    pairs = []
    for _ in range(3):
        z = rng.normal(size=(n, d))
        pairs.append(boot([(1, run(z, 1.0)), (-1, run(z, 1.2))]))
    lin, ex = np.mean(pairs, 0)
    rows.append(("difference gain 1 - gain 1.2", np.std(diffs, ddof=1), lin, ex))
    return rows


def main(reps: int = 200, b: int = 200, sizes: str = "64x200,64x1000,768x1000") -> None:
    print("| d, N | run | true sd | bootstrap sd, first order (ratio) | bootstrap sd, exact (ratio) |")
    print("|---|---|---|---|---|")
    for d, n in (tuple(int(v) for v in size.split("x")) for size in sizes.split(",")):
        for name, true, lin, ex in check(d, n, reps, b):
            print(f"| {d}, {n} | {name} | {true:.4g} | {lin:.4g} ({lin / true:.2f}) | {ex:.4g} ({ex / true:.2f}) |",
                  flush=True)
    print(f"\ntrue: over {reps} fresh samples; bootstrap: B = {b} prompt draws, the mean over 3 samples")


if __name__ == "__main__":
    main(*(int(x) for x in sys.argv[1:3]), *sys.argv[3:4])
