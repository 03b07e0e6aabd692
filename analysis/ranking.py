"""Table 1's ranking: non-dominated sorting per sampler setting, averaged over settings (Sec. 5.1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from rfsweep.results import REAL

# A setting is one (dataset, weights, steps, cfg) cell; backbone is part of it so that a sweep over
# several backbones never ranks one backbone's variant against another's.
SETTING_KEYS = ["dataset", "backbone", "weights", "steps", "cfg"]
TABLE1_COLUMNS = ["variant", "all", "5 steps", "50 steps"]


def pareto_ranks(clip, fid) -> np.ndarray:
    """Non-dominated sorting with CLIP score up and FID down (Sec. 5.1).

    ``a`` dominates ``b`` if ``clip_a >= clip_b`` and ``fid_a <= fid_b`` with at least one strict; rank 1 is
    the Pareto set, which is removed before the next set gets rank 2, and so on. Exact duplicates never
    dominate each other and so share a rank.
    """
    clip, fid = np.asarray(clip, dtype=float), np.asarray(fid, dtype=float)
    if clip.shape != fid.shape or clip.ndim != 1:
        raise ValueError(f"clip and fid must be 1-d of equal length, got {clip.shape} and {fid.shape}")
    if not (np.isfinite(clip).all() and np.isfinite(fid).all()):
        raise ValueError("clip and fid must be finite")
    # dom[i, j]: i dominates j
    ge, le = clip[:, None] >= clip[None, :], fid[:, None] <= fid[None, :]
    strict = (clip[:, None] > clip[None, :]) | (fid[:, None] < fid[None, :])
    dom = ge & le & strict
    ranks = np.zeros(len(clip), dtype=int)
    left = np.ones(len(clip), dtype=bool)
    r = 0
    while left.any():
        r += 1
        front = left & ~dom[left].any(axis=0)
        ranks[front] = r
        left &= ~front
    return ranks


def setting_ranks(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, variant) with its Pareto ``rank`` in that setting. Rows of one variant in one
    setting (several seeds) are averaged first; reference rows (weights == "real") are dropped."""
    df = df[df["weights"] != REAL]
    pts = df.groupby(SETTING_KEYS + ["variant"], as_index=False)[["clip_score", "fid"]].mean()
    parts = [g.assign(rank=pareto_ranks(g["clip_score"], g["fid"])) for _, g in pts.groupby(SETTING_KEYS)]
    return pd.concat(parts, ignore_index=True) if parts else pts.assign(rank=pd.Series(dtype=int))


def rank_table(df: pd.DataFrame) -> pd.DataFrame:
    """Table 1: each variant's rank averaged over all settings, over those with 5 steps and with 50 steps.

    A variant missing from some settings is averaged over the settings it has; a column with no setting
    (e.g. no 5-step results) is NaN. Sorted by ``all`` ascending, ties by variant name.
    """
    r = setting_ranks(df)
    if r.empty:
        raise ValueError("no ranked results: every row is a reference row or the frame is empty")
    out = pd.DataFrame({
        "all": r.groupby("variant")["rank"].mean(),
        "5 steps": r[r["steps"] == 5].groupby("variant")["rank"].mean(),
        "50 steps": r[r["steps"] == 50].groupby("variant")["rank"].mean(),
    })
    out = out.rename_axis("variant").reset_index()
    return out.sort_values(["all", "variant"], ignore_index=True)[TABLE1_COLUMNS]


def common_ranks(t1: pd.DataFrame, t2: pd.DataFrame, column: str = "all") -> pd.DataFrame:
    """``variant, <column>_x, <column>_y`` for the variants ranked in both tables."""
    return t1[["variant", column]].merge(t2[["variant", column]], on="variant").dropna()


def rank_correlation(t1: pd.DataFrame, t2: pd.DataFrame, column: str = "all") -> float:
    """Spearman correlation of ``column`` between two rank tables over their common variants."""
    m = common_ranks(t1, t2, column)
    if len(m) < 2:
        raise ValueError(f"need at least 2 common variants with a {column!r} rank, got {len(m)}")
    rho = spearmanr(m[f"{column}_x"], m[f"{column}_y"]).statistic
    return float(rho)
