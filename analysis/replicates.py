"""The bootstrap's replicates of Table 1 (`Confidence`, made by `analysis.confidence.bootstrap`) and what is read
from them: each column's places with their marginal intervals, simultaneous sets and tau-best set
(`analysis.rank_sets`), P(rank 1), pairwise probabilities, Table 2's cells and Fig. 3's bands with intervals."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.rank_sets import LEVEL, marginal_places, places, simultaneous_places, tau_best
from rfsweep.metrics import METRICS

# the per-column place columns of `Confidence.table`: the place, its marginal 95% interval (percentile), its
# simultaneous 95% set (every variant at once) and membership of the 95% set of who can be the best (tau = 1)
PLACE_COLUMNS = ["rank", "rank_lo", "rank_hi", "sim_lo", "sim_hi", "best"]


@dataclass
class Confidence:
    """Replicates of Table 1: `scores[column]` (B, V) averaged Pareto ranks, `variants` in column order."""

    variants: list[str]
    scores: dict[str, np.ndarray]
    point: pd.DataFrame  # the point Table 1 (analysis.ranking.rank_table)
    seeds: dict[str, int]  # training seeds per variant
    prompts: dict[str, int]  # prompts per data set
    settings: pd.DataFrame | None = None  # one row per ranking setting (SETTING_KEYS)
    values: np.ndarray | None = None  # (S, B, V, M): each metric of each variant in each replicate of each setting
    metrics: tuple[str, ...] = ()
    families: dict | None = None  # variant -> family
    # the pooled seed variance per data set, backbone, setting and metric (`analysis.seed_level.SeedLevel`); empty
    # with one seed per variant (the seed level is then absent)
    seed_variance: pd.DataFrame = field(default_factory=pd.DataFrame)
    # per column (B, V): replicates of the single-seed Table 1 that one new training seed of every variant would give
    # (`analysis.seed_level.SeedLevel.draw_new_run`); empty with one seed per variant
    new_seed: dict = field(default_factory=dict)

    def _settings_where(self, weights: str, cfg: float, steps: int | None = None) -> list[int]:
        s = self.settings
        sel = (s["weights"] == weights) & ((s["cfg"] - cfg).abs() < 1e-9)
        if steps is not None:
            sel &= s["steps"] == steps
        return list(np.flatnonzero(sel.to_numpy()))

    def table2_intervals(self, steps: int = 25, cfg: float = 5.0, weights: str = "ema") -> pd.DataFrame:
        """Table 2's cells with their 95% intervals: per data set, backbone, variant and metric the value's interval
        and the interval of its place among the variants (1 = best in the metric's direction)."""
        q, rows = (1 - LEVEL) / 2, []
        for s in self._settings_where(weights, cfg, steps):
            ds, bb = self.settings.iloc[s]["dataset"], self.settings.iloc[s]["backbone"]
            for k, m in enumerate(self.metrics):
                v = self.values[s, :, :, k] * (-1.0 if METRICS[m].direction == "max" else 1.0)  # lower is better
                lo, hi = marginal_places(v)
                for j, variant in enumerate(self.variants):
                    x = self.values[s, :, j, k]
                    rows.append({"dataset": ds, "backbone": bb, "variant": variant, "metric": m,
                                 "lo": float(np.quantile(x, q)), "hi": float(np.quantile(x, 1 - q)),
                                 "place_lo": int(lo[j]), "place_hi": int(hi[j])})
        return pd.DataFrame(rows)

    def family_bands(self, cfg: float = 5.0, weights: str = "ema") -> pd.DataFrame:
        """Fig. 3's bold lines with their 95% bands: per data set, backbone, family, steps and metric, the interval of
        the family's median over its variants."""
        q, rows = (1 - LEVEL) / 2, []
        for s in self._settings_where(weights, cfg):
            meta = self.settings.iloc[s]
            for fam in sorted(set(self.families.values())):
                cols = [j for j, v in enumerate(self.variants) if self.families[v] == fam]
                med = np.median(self.values[s][:, cols], axis=1)  # (B, M)
                for k, m in enumerate(self.metrics):
                    rows.append({"dataset": meta["dataset"], "backbone": meta["backbone"], "family": fam,
                                 "steps": int(meta["steps"]), "metric": m,
                                 "lo": float(np.quantile(med[:, k], q)), "hi": float(np.quantile(med[:, k], 1 - q))})
        return pd.DataFrame(rows)

    def positions(self, column: str = "all") -> np.ndarray:
        """(B, V): each variant's place in each replicate (1 = best; equal scores share the better place)."""
        return places(self.scores[column])

    def _point(self, column: str) -> np.ndarray:
        return self.point.set_index("variant")[column].reindex(self.variants).to_numpy(np.float64)

    def places(self, column: str = "all", tau: int = 1) -> pd.DataFrame:
        """One column's places: variant, <column>, rank (the point place), rank_lo, rank_hi (its marginal 95%
        interval), sim_lo, sim_hi (the simultaneous 95% sets), best (in the 95% set of the tau-best), p_rank1,
        p_top5, and with two seeds or more new_lo, new_hi (the 95% prediction interval of the place one new training
        seed would give: a replication's single-seed table, not the seeds' mean); sorted by the column."""
        s, point = self.scores[column], self._point(column)
        pos = places(s)
        lo, hi = marginal_places(s)
        sim_lo, sim_hi = simultaneous_places(point, s)
        out = pd.DataFrame({"variant": self.variants, column: point, "rank": places(point), "rank_lo": lo,
                            "rank_hi": hi, "sim_lo": sim_lo, "sim_hi": sim_hi, "best": tau_best(point, s, tau),
                            "p_rank1": (pos == 1).mean(0), "p_top5": (pos <= 5).mean(0)})
        if column in self.new_seed:
            out["new_lo"], out["new_hi"] = marginal_places(self.new_seed[column])
        return out.sort_values([column, "variant"], ignore_index=True)

    def table(self, column: str | None = None) -> pd.DataFrame:
        """Table 1's confidence. With `column`: that column's `places`. Without: the `all` column's places and
        P(rank 1), P(top 5) under plain names, and every other column's PLACE_COLUMNS as ``<column> <name>``
        (``5 steps rank_lo``), sorted by `all`."""
        if column is not None:
            return self.places(column)
        out = self.places("all")
        for other in self.scores:
            if other != "all":
                more = self.places(other)[["variant", *PLACE_COLUMNS]]
                out = out.merge(more.rename(columns={c: f"{other} {c}" for c in PLACE_COLUMNS}), on="variant")
        return out

    def widths(self, column: str = "all") -> tuple[float, float]:
        """Mean width of the 95% intervals: of each variant's place (marginal), and of the difference between the
        averaged ranks of neighbours in the point table (what the shared prompt draw sharpens)."""
        q = (1 - LEVEL) / 2
        lo, hi = marginal_places(self.scores[column])
        point = self._point(column)
        order = np.lexsort((np.array(self.variants), point))
        d = self.scores[column][:, order[:-1]] - self.scores[column][:, order[1:]]
        return float(np.mean(hi - lo)), float(np.mean(np.quantile(d, 1 - q, axis=0) - np.quantile(d, q, axis=0)))

    def pairwise(self, column: str = "all") -> pd.DataFrame:
        """P(row ranks ahead of column): the share of replicates where its score is lower, ties counting half."""
        s = self.scores[column]
        p = (s[:, :, None] < s[:, None, :]).mean(0) + 0.5 * (s[:, :, None] == s[:, None, :]).mean(0)
        return pd.DataFrame(p, index=self.variants, columns=self.variants)

    def differences(self, level: float = LEVEL) -> pd.DataFrame:
        """Every pair's paired metric difference a - b per setting, its percentile interval at `level`: setting keys,
        metric, a, b, lo, hi."""
        q = (1 - level) / 2
        a, b = np.triu_indices(len(self.variants), 1)
        rows = []
        for s, setting in enumerate(self.settings.to_dict("records")):
            for k, m in enumerate(self.metrics):
                d = self.values[s, :, a, k] - self.values[s, :, b, k]  # (pairs, B)
                lo, hi = np.quantile(d, q, axis=1), np.quantile(d, 1 - q, axis=1)
                rows.append(pd.DataFrame({**setting, "metric": m, "a": np.array(self.variants)[a],
                                          "b": np.array(self.variants)[b], "lo": lo, "hi": hi}))
        return pd.concat(rows, ignore_index=True)
