"""Tests of claims read from the bootstrap's replicates and from the results: "A is better than B" (`compare`, Holm
over the claims), Spearman correlations of two Tables 1 with their intervals (`correlation_interval`,
`inside_intervals`), and Friedman's test with Nemenyi's post-hoc test and the critical-difference diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import friedmanchisquare, rankdata
from statsmodels.stats.multitest import multipletests

from analysis.rank_sets import LEVEL
from analysis.ranking import SETTING_KEYS, pareto_ranks
from analysis.replicates import Confidence
from rfsweep.metrics import METRICS
from rfsweep.results import REAL


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of x, y (B, V) (average ranks for ties, as scipy's spearmanr)."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    return (rx * ry).sum(1) / np.sqrt((rx**2).sum(1) * (ry**2).sum(1))


def correlation_interval(conf: Confidence, other, column: str = "all") -> tuple[float, float, int]:
    """The 95% bootstrap interval of Spearman's rho between Table 1's `column` and `other`'s: a published table
    (variant, column), fixed, or another sweep's `Confidence` (its replicates drawn independently); over the common
    variants. Returns (lo, hi, common variants)."""
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
    return float(max(-1.0, lo)), float(min(1.0, hi)), len(common)


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
    """(blocks x variants): each variant's Pareto rank averaged over the sampler settings of one independent block, a
    data set and training seed (the settings of one block rank the same trained networks: they are not independent)."""
    names = list(METRICS)
    directions = [METRICS[n].direction for n in names]
    rows = df[df["weights"] != REAL]
    parts = [g.assign(rank=pareto_ranks(g[names].to_numpy(), directions))
             for _, g in rows.groupby([*SETTING_KEYS, "seed"])]
    ranked = pd.concat(parts, ignore_index=True)
    return ranked.pivot_table(index=["dataset", "backbone", "seed"], columns="variant", values="rank", aggfunc="mean")


def friedman(df: pd.DataFrame) -> tuple[float, float, pd.Series, pd.DataFrame]:
    """Friedman's test (scipy) over independent blocks (`block_ranks`: data set x training seed), the variants' mean
    ranks and Nemenyi's post-hoc p-values (scikit-posthocs): (statistic, p, mean ranks, p-values)."""
    import scikit_posthocs as sp  # deferred: scikit-posthocs loads matplotlib and seaborn; only for Friedman's test

    r = block_ranks(df)
    if r.isna().any().any() or r.shape[1] < 3 or r.shape[0] < 2:
        raise ValueError(f"the Friedman test needs every variant in every block (data set x seed), at least 3 "
                         f"variants and 2 blocks (got {r.shape[1]} variants, {r.shape[0]} blocks, complete: "
                         f"{not r.isna().any().any()})")
    stat, p = friedmanchisquare(*[r[c].to_numpy() for c in r.columns])
    mean_ranks = r.rank(axis=1).mean()
    return float(stat), float(p), mean_ranks, sp.posthoc_nemenyi_friedman(r.to_numpy()).set_axis(
        r.columns, axis=0).set_axis(r.columns, axis=1)


def cd_diagram(mean_ranks: pd.Series, pvalues: pd.DataFrame, path: str | Path) -> Path:
    """The critical-difference diagram (scikit-posthocs): variants on the mean-rank axis, bars joining the ones
    Nemenyi's test does not separate at 5%."""
    import matplotlib  # deferred: matplotlib (~0.5 s), scikit-posthocs and analysis.figures, only for the diagram

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scikit_posthocs as sp

    from analysis.figures import save_figure  # deferred with matplotlib (above)

    fig, ax = plt.subplots(figsize=(10, 0.2 * len(mean_ranks) + 2))
    sp.critical_difference_diagram(mean_ranks, pvalues, ax=ax, label_fmt_left="{label} ({rank:.1f})  ",
                                   label_fmt_right="  ({rank:.1f}) {label}", text_h_margin=0.3)
    ax.set_title("Mean rank over the ranking settings (Friedman; bars: not separated by Nemenyi at 5%)")
    return save_figure(fig, path)
