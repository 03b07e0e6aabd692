"""Tests of claims read from the bootstrap's replicates and from the results: "A is better than B" (`compare`, Holm
over the claims), Spearman correlations of two Tables 1 with their intervals (`correlation_interval`,
`inside_intervals`; two sweeps that share prompts and noise are bootstrapped on one prompt draw: `shared_prompts`,
`paired_bootstraps`), and Friedman's test over the data set x backbone blocks with Iman and Davenport's F, pairwise
Wilcoxon signed-rank tests with Holm's correction and the critical-difference diagram (Demsar 2006, JMLR 7)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import f, friedmanchisquare, rankdata, wilcoxon
from statsmodels.stats.multitest import multipletests

from analysis.rank_sets import LEVEL
from analysis.ranking import setting_ranks
from analysis.replicates import Confidence
from rfsweep.metrics import METRICS
from rfsweep.results import REAL


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of x, y (B, V) (average ranks for ties, as scipy's spearmanr)."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    return (rx * ry).sum(1) / np.sqrt((rx**2).sum(1) * (ry**2).sum(1))


def _samples(df: pd.DataFrame, banks: dict) -> dict[str, set]:
    """Per data set, the distinct (prompt indices, noise seeds) of its runs' samples, setting by setting."""
    rows = df[df["weights"] != REAL]
    out: dict[str, set] = {}
    for run, ds in rows.drop_duplicates("run_dir")[["run_dir", "dataset"]].itertuples(index=False):
        for e in banks[str(run)].settings.values():
            out.setdefault(ds, set()).add((e.prompt.numpy().tobytes(), e.noise_seed.numpy().tobytes()))
    return out


def shared_prompts(a: pd.DataFrame, banks_a: dict, b: pd.DataFrame, banks_b: dict) -> bool:
    """Whether two sweeps can share a bootstrap prompt draw: they have a data set in common and, in every common
    data set, every run of both was evaluated on the same samples (the same prompt index and noise seed for sample
    i, so the same prompt count). Then bootstrapping both with one seed (`analysis.confidence.prompt_draws`: a draw
    depends on the data set, prompt count, B and seed alone) pairs their replicates."""
    sa, sb = _samples(a, banks_a), _samples(b, banks_b)
    common = set(sa) & set(sb)
    return bool(common) and all(len(sa[ds] | sb[ds]) == 1 for ds in common)


def correlation_interval(conf: Confidence, other, column: str = "all") -> tuple[float, float, int]:
    """The 95% bootstrap interval of Spearman's rho between Table 1's `column` and `other`'s: a published table
    (variant, column), fixed, or another sweep's `Confidence`, replicate b against its replicate b (paired when both
    were bootstrapped on one prompt draw, `shared_prompts`; else independent); over the common variants. Returns
    (lo, hi, common variants)."""
    mine = pd.DataFrame(conf.scores[column].T, index=conf.variants)
    if isinstance(other, Confidence):
        theirs = pd.DataFrame(other.scores[column].T, index=other.variants)
    else:
        theirs = other.set_index("variant")[[column]].dropna()
    common = [v for v in mine.index if v in theirs.index]
    if len(common) < 3:
        raise ValueError(f"need at least 3 common variants with a {column!r} rank, got {len(common)}")
    x = mine.loc[common].to_numpy().T
    y = theirs.loc[common].to_numpy().T
    n = len(x) if y.shape[0] == 1 else min(len(x), len(y))
    x, y = x[:n], np.broadcast_to(y, x[:n].shape) if y.shape[0] == 1 else y[:n]
    rho = _spearman_rows(x, y)
    point_x = conf.point.set_index("variant")[column].reindex(common).to_numpy()[None]
    point_y = (other.point.set_index("variant")[column].reindex(common).to_numpy()[None]
               if isinstance(other, Confidence) else y[:1])
    point = float(_spearman_rows(point_x, point_y)[0])
    q = (1 - LEVEL) / 2  # the basic interval: replicate ranks are noisier than the point's, which pulls rho* to 0
    lo, hi = 2 * point - np.quantile(rho, 1 - q), 2 * point - np.quantile(rho, q)
    return float(np.clip(lo, -1.0, 1.0)), float(np.clip(hi, -1.0, 1.0)), len(common)


def inside_intervals(conf: Confidence, published: pd.DataFrame, column: str = "all") -> tuple[int, int]:
    """How many of a published table's averaged ranks (the paper's 16 rows) lie inside this sweep's 95% interval of
    the same variant's averaged rank: (inside, common variants)."""
    s = pd.DataFrame(conf.scores[column].T, index=conf.variants)
    q = (1 - LEVEL) / 2
    lo, hi = s.quantile(q, axis=1), s.quantile(1 - q, axis=1)
    pub = published.set_index("variant")[column].dropna()
    common = [v for v in pub.index if v in s.index]
    return sum(bool(lo[v] <= pub[v] <= hi[v]) for v in common), len(common)


def compare(conf: Confidence, claims: list[tuple[str, str]], column: str = "all") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Claims "A is better than B", tested on the replicates. Per claim and setting: each metric's paired difference
    A - B with its 95% interval and P(A dominates B) there. Per claim: P(A ranks ahead of B in Table 1's `column`),
    its one-sided p (the share of replicates where A is not ahead) and the p Holm-corrected over the claims."""
    unknown = sorted({v for pair in claims for v in pair} - set(conf.variants))
    if unknown:
        raise ValueError(f"compare: {unknown} not in the sweep (allowed: {', '.join(conf.variants)})")
    q = (1 - LEVEL) / 2
    sign = np.array([1.0 if METRICS[m].direction == "max" else -1.0 for m in conf.metrics])
    per_setting, summary = [], []
    for a, b in claims:
        i, j = conf.variants.index(a), conf.variants.index(b)
        va, vb = conf.values[:, :, i] * sign, conf.values[:, :, j] * sign  # (S, B, M), higher is better
        dominates = ((va >= vb).all(-1) & (va > vb).any(-1)).mean(1)  # (S,)
        for s, setting in enumerate(conf.settings.to_dict("records")):
            for k, m in enumerate(conf.metrics):
                d = conf.values[s, :, i, k] - conf.values[s, :, j, k]
                per_setting.append({"claim": f"{a} > {b}", **setting, "metric": m, "difference": float(np.median(d)),
                                    "lo": float(np.quantile(d, q)), "hi": float(np.quantile(d, 1 - q)),
                                    "p_dominates": float(dominates[s])})
        s = conf.scores[column]
        summary.append({"claim": f"{a} > {b}", "p_ahead": float((s[:, i] < s[:, j]).mean()),
                        "p": float(((s[:, i] >= s[:, j]).sum() + 1) / (len(s) + 1))})  # never 0 from B replicates
    out = pd.DataFrame(summary)
    out["p_holm"] = multipletests(out["p"], method="holm")[1]
    return out, pd.DataFrame(per_setting)


def block_ranks(df: pd.DataFrame) -> pd.DataFrame:
    """(blocks x variants): each variant's Pareto rank in each sampler setting, averaged over the settings of one
    block, a data set and backbone. The rank per setting is Table 1's (`analysis.ranking.setting_ranks`: each
    variant's metrics averaged over its training seeds first, then non-dominated sorting), so the blocks average to
    Table 1's `all` column. Seeds are not blocks: the seeds of one data set share its prompts and noise, and the
    settings of one block rank the same trained networks; only data sets (and backbones) are taken as independent."""
    r = setting_ranks(df)
    return r.pivot_table(index=["dataset", "backbone"], columns="variant", values="rank", aggfunc="mean")


class FriedmanTest(NamedTuple):
    """`friedman`'s answer: Friedman's chi2 (scipy, corrected for ties) and its p, Iman and Davenport's F and its p,
    the variants' mean ranks over the blocks (1 = best), the Holm-corrected pairwise p-values (`pairwise_wilcoxon`),
    the number of blocks N and `floor`, the smallest two-sided p N blocks permit a pair (`wilcoxon_floor`)."""

    chi2: float
    p: float
    f: float
    p_f: float
    mean_ranks: pd.Series
    pvalues: pd.DataFrame
    blocks: int
    floor: float

    def separated(self, alpha: float = 0.05) -> tuple[int, int]:
        """(pairs whose Holm-corrected p is below `alpha`, pairs)."""
        k = len(self.pvalues)
        upper = self.pvalues.to_numpy()[np.triu_indices(k, 1)]
        return int((upper < alpha).sum()), len(upper)


def iman_davenport(chi2: float, n: int, k: int) -> tuple[float, float]:
    """Iman and Davenport's F_F = (N - 1) chi2 / (N (k - 1) - chi2) of Friedman's chi2 over N blocks and k variants,
    and its p from the F distribution with (k - 1, (k - 1)(N - 1)) degrees of freedom (Demsar 2006, Sec. 3.2.2: less
    conservative than chi2's approximation). Infinite F (p = 0) where every block ranks the variants alike."""
    denom = n * (k - 1) - chi2
    if denom <= 0:
        return float("inf"), 0.0
    stat = (n - 1) * chi2 / denom
    return float(stat), float(f.sf(stat, k - 1, (k - 1) * (n - 1)))


def wilcoxon_floor(n: int) -> float:
    """The smallest two-sided p of an exact signed-rank (or sign) test over n paired blocks: 2 / 2^n, every
    difference of one sign (0.5 with two blocks: nothing can be separated)."""
    return 2.0 ** (1 - n)


def _paired_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p of Wilcoxon's signed-rank test of x - y over the blocks (scipy, zeros dropped: exact without
    ties, an exact sign-flip permutation with ties up to 13 blocks, the normal approximation beyond). Where it is
    undefined, with no non-zero difference (scipy's approximation gives NaN), the sign test's: 1, nothing against
    the null."""
    if not np.any(x != y):
        return 1.0
    return float(wilcoxon(x, y, zero_method="wilcox").pvalue)


def pairwise_wilcoxon(r: pd.DataFrame) -> pd.DataFrame:
    """(variants x variants) two-sided p-values of paired Wilcoxon signed-rank tests over the blocks (rows of `r`),
    Holm-corrected over the k (k - 1) / 2 pairs (as scikit-posthocs' posthoc_wilcoxon(..., p_adjust="holm")); 1 on
    the diagonal. Over N blocks no p is below `wilcoxon_floor(N)`, no Holm-corrected one below k (k - 1) / 2 times
    it (Holm's first step): where that is 1 or more every corrected p is exactly 1 and no test is run (scipy's
    permutation test with tied differences costs 0.3 s a pair, 1830 pairs for 61 variants). Replaces Nemenyi's test,
    whose normal approximation needs many blocks."""
    x = r.to_numpy(np.float64)
    k = x.shape[1]
    i, j = np.triu_indices(k, 1)
    p = np.ones((k, k))
    if len(i) and len(i) * wilcoxon_floor(len(x)) < 1:
        raw = np.array([_paired_p(x[:, a], x[:, b]) for a, b in zip(i, j)])
        p[i, j] = p[j, i] = multipletests(raw, method="holm")[1]
    return pd.DataFrame(p, index=r.columns, columns=r.columns)


def friedman_blocks(r: pd.DataFrame) -> FriedmanTest:
    """`FriedmanTest` of a (blocks x variants) table of scores, lower better (`block_ranks`): Friedman's test over
    the blocks (scipy), Iman and Davenport's F, the mean within-block ranks, and `pairwise_wilcoxon`. Refused
    (ValueError, one line) with a missing cell, fewer than 3 variants or fewer than 2 blocks."""
    if r.isna().any().any() or r.shape[1] < 3 or r.shape[0] < 2:
        raise ValueError(f"the Friedman test needs every variant in every block (data set x backbone), at least 3 "
                         f"variants and 2 blocks (got {r.shape[1]} variants, {r.shape[0]} blocks, complete: "
                         f"{not r.isna().any().any()})")
    n, k = r.shape
    chi2, p = friedmanchisquare(*[r[c].to_numpy() for c in r.columns])
    stat, p_f = iman_davenport(float(chi2), n, k)
    return FriedmanTest(float(chi2), float(p), stat, p_f, r.rank(axis=1).mean(), pairwise_wilcoxon(r), n,
                        wilcoxon_floor(n))


def friedman(df: pd.DataFrame) -> FriedmanTest:
    """`friedman_blocks` of the results' `block_ranks` (data set x backbone blocks)."""
    return friedman_blocks(block_ranks(df))


def cd_diagram(mean_ranks: pd.Series, pvalues: pd.DataFrame, path: str | Path) -> Path:
    """The critical-difference diagram (scikit-posthocs): variants on the mean-rank axis, bars joining the ones the
    pairwise p-values (`pairwise_wilcoxon`: Wilcoxon signed-rank over the blocks, Holm) do not separate at 5%."""
    import matplotlib  # deferred: matplotlib (~0.5 s), scikit-posthocs and analysis.figures, only for the diagram

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scikit_posthocs as sp

    from analysis.figures import save_figure  # deferred with matplotlib (above)

    fig, ax = plt.subplots(figsize=(10, 0.2 * len(mean_ranks) + 2))
    sp.critical_difference_diagram(mean_ranks, pvalues, ax=ax, label_fmt_left="{label} ({rank:.1f})  ",
                                   label_fmt_right="  ({rank:.1f}) {label}", text_h_margin=0.3)
    ax.set_title("Mean rank over the blocks (Friedman; bars: not separated by Wilcoxon-Holm at 5%)")
    return save_figure(fig, path)
