"""Table 1's ranking: non-dominated sorting per sampler setting, averaged over settings (Sec. 5.1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from rfsweep.metrics import METRICS, ranked_names
from rfsweep.results import REAL

# A setting is one (dataset, weights, steps, cfg) cell; backbone is part of it so that a sweep over
# several backbones never ranks one backbone's variant against another's.
SETTING_KEYS = ["dataset", "backbone", "weights", "steps", "cfg"]
TABLE1_COLUMNS = ["variant", "all", "5 steps", "50 steps"]
# Table 2's column groups and Fig. 3's rows: one data set with one backbone (a sweep over several backbones never
# averages one backbone's network with another's)
PANEL_KEYS = ["dataset", "backbone"]


def backbone_labels(s: pd.Series) -> pd.Series:
    """The backbone column as strings, "-" where a row names none (pandas keeps NaN through astype(str))."""
    return s.fillna("-").astype(str)


def panels(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(dataset, backbone, name) of each panel of the ranked rows, in the order the rows give them; the name is the
    data set alone when every row has one backbone (the paper's layout), else "<dataset> <backbone>"."""
    rows = df[df["weights"] != REAL]
    keys = list(dict.fromkeys(zip(rows["dataset"].astype(str), backbone_labels(rows["backbone"]))))
    several = len({b for _, b in keys}) > 1
    return [(d, b, f"{d} {b}" if several else d) for d, b in keys]


def pareto_ranks(values, directions) -> np.ndarray:
    """Non-dominated sorting over any number of objectives (Sec. 5.1: CLIP score up, FID down; `ranked_metrics`).

    ``values``: (N, M), one column per objective; ``directions``: M of "max" / "min". ``a`` dominates ``b`` if
    it is at least as good in every objective and better in one; rank 1 is the Pareto set, which is removed
    before the next set gets rank 2, and so on. Exact duplicates never dominate each other and share a rank.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(directions):
        raise ValueError(f"values must be (N, {len(directions)}) for directions {list(directions)}, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("objective values must be finite")
    if any(d not in ("max", "min") for d in directions):
        raise ValueError(f"directions {list(directions)}: each must be max or min")
    x = x * np.where(np.asarray(directions) == "max", 1.0, -1.0)  # every objective: higher is better
    ge = (x[:, None, :] >= x[None, :, :]).all(-1)  # ge[i, j]: i at least as good as j everywhere
    gt = (x[:, None, :] > x[None, :, :]).any(-1)
    dom = ge & gt  # dom[i, j]: i dominates j
    ranks = np.zeros(len(x), dtype=int)
    left = np.ones(len(x), dtype=bool)
    r = 0
    while left.any():
        r += 1
        front = left & ~dom[left].any(axis=0)
        ranks[front] = r
        left &= ~front
    return ranks


def ranked_metrics(df: pd.DataFrame) -> list[str]:
    """The metrics the ranking uses (`rfsweep.metrics.ranked_names`); a ranked row without a value of one (results
    written before the metric was registered, with no evidence bank to compute it from) is refused in one line
    naming the metric and the runs."""
    names = list(ranked_names())
    rows = df[df["weights"] != REAL]
    for m in names:
        lacking = sorted(set(rows.loc[rows[m].isna() if m in rows else slice(None), "run_dir"].astype(str)))
        if lacking:
            raise ValueError(f"cannot rank by {m}: {len(lacking)} runs have no {m} value and no evidence bank to "
                             f"compute it from (e.g. {', '.join(lacking[:3])}); rank by others (--rank-by) or rerun "
                             f"their evaluation (stage=evaluate)")
    return names


def setting_ranks(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, variant) with its Pareto ``rank`` in that setting over the ranking's metrics
    (`ranked_metrics`), and the means of every registered metric. Rows of one variant in one setting (several seeds)
    are averaged first; reference rows are dropped."""
    names = ranked_metrics(df)
    directions = [METRICS[n].direction for n in names]
    df = df[df["weights"] != REAL]
    pts = df.groupby(SETTING_KEYS + ["variant"], as_index=False)[[m for m in METRICS if m in df]].mean()
    parts = [g.assign(rank=pareto_ranks(g[names].to_numpy(), directions)) for _, g in pts.groupby(SETTING_KEYS)]
    return pd.concat(parts, ignore_index=True) if parts else pts.assign(rank=pd.Series(dtype=int))


def column_rows(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows of ``df`` whose setting counts towards Table 1's ``column`` (all, 5 steps, 50 steps)."""
    if column not in TABLE1_COLUMNS[1:]:
        raise ValueError(f"column {column!r} (allowed: {', '.join(TABLE1_COLUMNS[1:])})")
    return df if column == "all" else df[df["steps"] == int(column.split()[0])]


def rank_table(df: pd.DataFrame) -> pd.DataFrame:
    """Table 1: each variant's rank averaged over all settings, over those with 5 steps and with 50 steps.

    A variant missing from some settings is averaged over the settings it has; a column with no setting
    (e.g. no 5-step results) is NaN. Sorted by ``all`` ascending, ties by variant name.
    """
    r = setting_ranks(df)
    if r.empty:
        raise ValueError("no ranked results: every row is a reference row or the frame is empty")
    out = pd.DataFrame({c: column_rows(r, c).groupby("variant")["rank"].mean() for c in TABLE1_COLUMNS[1:]})
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


def metric_agreement(df: pd.DataFrame, table: pd.DataFrame, column: str = "all") -> pd.DataFrame:
    """Where a sweep agrees with another Table 1 (e.g. the paper's): for each dataset and metric, the Spearman
    correlation between the variants ordered by that metric alone (best first) and ``table[column]``, averaged
    over the settings of ``column``; plus the row ``rank`` (the sweep's own Pareto rank per setting).

    Columns: dataset, metric, rho, settings (how many settings were averaged). Only variants in both count.
    """
    r = column_rows(setting_ranks(df), column)
    ref = table.set_index("variant")[column].dropna()
    rows = []
    for ds, part in r.groupby("dataset", sort=False):
        for name in ["rank", *(m for m in METRICS if m in part)]:
            sign = -1.0 if name != "rank" and METRICS[name].direction == "max" else 1.0
            rhos = []
            for _, g in part.groupby(SETTING_KEYS):
                x = (sign * g.set_index("variant")[name]).reindex(ref.index).dropna()
                if x.nunique() > 1:  # a setting where every variant ties says nothing
                    rhos.append(spearmanr(x, ref[x.index]).statistic)
            rows.append({"dataset": ds, "metric": name, "rho": float(np.mean(rhos)) if rhos else np.nan,
                         "settings": len(rhos)})
    return pd.DataFrame(rows, columns=["dataset", "metric", "rho", "settings"])
