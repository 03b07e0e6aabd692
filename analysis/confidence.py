"""How sure Table 1 is: a paired, hierarchical bootstrap over the evidence banks (`rfsweep.evaluation.bank`).

Each replicate resamples the training seeds of every variant (one draw per variant, shared by its settings), then
the prompt indices of each data set (one draw shared by every variant and setting of that data set: the samples of
prompt i of every run started from the same noise, so the comparison is paired), recomputes every registered metric
of every (run, setting) from the resampled samples, and replays Table 1 exactly as the point table computes it:
non-dominated sorting per setting (`analysis.ranking.pareto_ranks`), averaged over the settings of each column.

A metric is recomputed through its first-order expansion in the samples' weights (`RESAMPLERS`): exact for the CLIP
score (a mean), the delta method for FID (the derivative of the Frechet distance of the weighted feature statistics,
`fid_influence`); the expansion leaves out the upward bias that duplicated samples give a resampled FID, which is
common to the variants of a setting. Vectorised over replicates: B x settings x runs in one pass of matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import friedmanchisquare, norm, rankdata
from statsmodels.stats.multitest import multipletests

from analysis.collect import collect
from analysis.ema_choice import posthoc_rows
from analysis.ranking import SETTING_KEYS, TABLE1_COLUMNS, column_rows, pareto_ranks, rank_table
from rfsweep.evaluation.bank import BANK_FILE, EvidenceBank, SampleEvidence, setting_key
from rfsweep.evaluation.statistics import _psd_sqrt, feature_stats
from rfsweep.metrics import METRICS
from rfsweep.results import REAL

LEVEL = 0.95


def fid_influence(features, mu_r: np.ndarray, sigma_r: np.ndarray | None = None,
                  sigma_r_sqrt: np.ndarray | None = None) -> np.ndarray:
    """The influence of each sample on the FID of `features` against (mu_r, sigma_r): d FID / d w_i for the weight
    moved onto sample i, with FID = |mu - mu_r|^2 + tr(S) + tr(S_r) - 2 tr((S_r^1/2 S S_r^1/2)^1/2) of the weighted
    mean and (unbiased) covariance. d tr(K^1/2) = tr(M dS) / 2 with M = S_r^1/2 K^-1/2 S_r^1/2, so sample x_i moves
    it by 2 (mu - mu_r).(x_i - mu) + c (x_i - mu)^T (I - M) (x_i - mu) - tr((I - M) S), c = N / (N - 1).
    `sigma_r_sqrt`: S_r^1/2, when the caller has it."""
    x = np.asarray(features, np.float64)
    n, d = x.shape
    mu, s = feature_stats(x)
    r = _psd_sqrt(np.asarray(sigma_r, np.float64)) if sigma_r_sqrt is None else sigma_r_sqrt
    k = r @ s @ r
    w, v = np.linalg.eigh((k + k.T) / 2)
    inv_sqrt = (v / np.sqrt(np.clip(w, 1e-12 * max(w.max(), 1e-300), None))) @ v.T
    a = np.eye(d) - r @ inv_sqrt @ r
    xc = x - mu
    influence = 2 * xc @ (mu - mu_r) + ((xc @ a) * xc).sum(1) * n / (n - 1) - np.trace(a @ s)
    return influence - influence.mean()


def _clip(e: SampleEvidence, reference) -> np.ndarray:
    s = e.similarity.double().numpy()
    return s - s.mean()


def _fid(e: SampleEvidence, reference) -> np.ndarray:
    mu_r, _, r = reference
    return fid_influence(e.features.float().numpy(), mu_r, sigma_r_sqrt=r)


# metric name -> (sample evidence, reference (mu, sigma, sigma^1/2)) -> the influence of each sample on its value
RESAMPLERS = {"clip_score": _clip, "fid": _fid}


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
                place = 1 + (v[:, None, :] < v[:, :, None]).sum(-1)
                for j, variant in enumerate(self.variants):
                    x = self.values[s, :, j, k]
                    rows.append({"dataset": ds, "backbone": bb, "variant": variant, "metric": m,
                                 "lo": float(np.quantile(x, q)),
                                 "hi": float(np.quantile(x, 1 - q)),
                                 "place_lo": int(np.quantile(place[:, j], q, method="lower")),
                                 "place_hi": int(np.quantile(place[:, j], 1 - q, method="higher"))})
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
        s = self.scores[column]
        return 1 + (s[:, None, :] < s[:, :, None]).sum(-1)

    def table(self, column: str = "all") -> pd.DataFrame:
        """variant, <column>, rank, rank_lo, rank_hi (the 95% interval of the place), p_rank1, p_top5, tie (in the
        tie group of the point table's best: the 95% interval of its score minus the best's reaches 0)."""
        pos, s = self.positions(column), self.scores[column]
        point = self.point.set_index("variant")[column].reindex(self.variants).to_numpy()
        place = 1 + (point[None, :] < point[:, None]).sum(-1)
        best = int(np.argmin(point))
        q = (1 - LEVEL) / 2
        diff_lo = np.quantile(s - s[:, [best]], q, axis=0)
        out = pd.DataFrame({"variant": self.variants, column: point, "rank": place,
                            "rank_lo": np.quantile(pos, q, axis=0, method="lower"),
                            "rank_hi": np.quantile(pos, 1 - q, axis=0, method="higher"),
                            "p_rank1": (pos == 1).mean(0), "p_top5": (pos <= 5).mean(0), "tie": diff_lo <= 0})
        return out.sort_values([column, "variant"], ignore_index=True)

    def widths(self, column: str = "all") -> tuple[float, float]:
        """Mean width of the 95% intervals: of each variant's place, and of the difference between the averaged
        ranks of neighbours in the point table (what the shared prompt draw sharpens)."""
        q = (1 - LEVEL) / 2
        pos = self.positions(column)
        place = float(np.mean(np.quantile(pos, 1 - q, axis=0, method="higher")
                              - np.quantile(pos, q, axis=0, method="lower")))
        order = self.table(column)["variant"].map(self.variants.index).to_numpy()
        d = self.scores[column][:, order[:-1]] - self.scores[column][:, order[1:]]
        return place, float(np.mean(np.quantile(d, 1 - q, axis=0) - np.quantile(d, q, axis=0)))

    def pairwise(self, column: str = "all") -> pd.DataFrame:
        """P(row ranks ahead of column): the share of replicates where its score is lower, ties counting half."""
        s = self.scores[column]
        p = (s[:, :, None] < s[:, None, :]).mean(0) + 0.5 * (s[:, :, None] == s[:, None, :]).mean(0)
        return pd.DataFrame(p, index=self.variants, columns=self.variants)


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


def _bank_paths(df: pd.DataFrame) -> dict[str, Path]:
    """run_dir -> its bank: beside the results file the rows were read from (`collect`'s results_dir), else in the
    run folder the rows name."""
    rows = df[df["weights"] != REAL]
    where = rows["results_dir"] if "results_dir" in rows.columns else rows["run_dir"]
    return {str(run): Path(folder) / BANK_FILE for run, folder in zip(rows["run_dir"], where)}


def missing_banks(df: pd.DataFrame, loaded: dict | None = None) -> list[str]:
    """The runs of `df` whose evidence bank is absent, damaged, of another evaluator or checkpoint, lacks one of
    their rows, or does not hold what a row's CLIP score was computed from. `loaded`, when given, receives the banks
    read (run_dir -> bank), so the bootstrap need not read them again."""
    out = []
    rows = df[df["weights"] != REAL]
    paths = _bank_paths(df)
    for run, part in rows.groupby("run_dir"):
        try:
            bank = EvidenceBank.load(paths[str(run)])
        except ValueError:
            bank = None
        ok = bank is not None and bank.evaluator_id == str(part["evaluator"].iloc[0]) and all(
            bank.has(w, s, c) and bank.ckpt_step == int(step) and abs(float(bank.settings[setting_key(w, s, c)]
                                                                           .similarity.double().mean()) - clip) < 1e-5
            for w, s, c, step, clip in zip(part["weights"], part["steps"], part["cfg"], part["ckpt_step"],
                                           part["clip_score"]))
        if not ok:
            out.append(str(run))
        elif loaded is not None:
            loaded[str(run)] = bank
    return out


def load_banks(df: pd.DataFrame) -> dict[str, EvidenceBank]:
    return {run: EvidenceBank.load(path) for run, path in _bank_paths(df).items()}


def _evidence(df: pd.DataFrame, banks: dict):
    """(rows, prompts per data set, influence, counts): per results row (its point values are the row's), each
    metric's influence summed per prompt (P,) and the samples per prompt (P,)."""
    unknown = [m for m in METRICS if m not in RESAMPLERS]
    if unknown:
        raise ValueError(f"metrics {unknown} have no bootstrap (allowed: a RESAMPLERS entry in analysis.confidence)")
    rows = df[df["weights"] != REAL].reset_index(drop=True).copy()
    prompts: dict[str, int] = {}
    shapes: dict[str, set] = {}
    for run, bank in banks.items():
        ds = rows.loc[rows["run_dir"] == run, "dataset"].iloc[0]
        for e in bank.settings.values():
            shapes.setdefault(ds, set()).add((len(e.prompt), int(e.prompt.max()) + 1))
    for ds, seen in shapes.items():
        if len(seen) > 1:
            raise ValueError(f"data set {ds}: its runs were evaluated with different samples or prompts "
                             f"({sorted(seen)}: (samples, prompts)); the paired bootstrap needs the same ones "
                             f"(allowed: one eval.n_samples per data set)")
        prompts[ds] = next(iter(seen))[1]
    infl = {m: [] for m in METRICS}
    counts, refs = [], {}
    for run, weights, steps, cfg, ds in zip(rows["run_dir"], rows["weights"], rows["steps"], rows["cfg"],
                                            rows["dataset"]):
        bank = banks[run]
        e = bank.settings[setting_key(weights, steps, cfg)]
        if run not in refs:
            mu_r, sigma_r = feature_stats(bank.reference.float().numpy())
            refs[run] = (mu_r, sigma_r, _psd_sqrt(sigma_r))
        p = e.prompt.numpy()
        counts.append(np.bincount(p, minlength=prompts[ds]).astype(np.float64))
        for m in METRICS:
            infl[m].append(np.bincount(p, weights=RESAMPLERS[m](e, refs[run]), minlength=prompts[ds]))
    return rows, prompts, infl, counts


def _pareto(x: np.ndarray, directions: list[str]) -> np.ndarray:
    """Non-dominated sorting of (B, V, M) values, replicate by replicate at once (as `analysis.ranking.pareto_ranks`):
    a front is what no remaining variant dominates; each front's members then stop counting as dominators."""
    x = x * np.where(np.asarray(directions) == "max", 1.0, -1.0)
    dom = ((x[:, :, None, :] >= x[:, None, :, :]).all(-1) & (x[:, :, None, :] > x[:, None, :, :]).any(-1))
    dom = dom.astype(np.float32)  # dom[b, i, j]: i dominates j
    dominators = dom.sum(1)
    ranks = np.zeros(x.shape[:2], dtype=np.int64)
    left = np.ones(x.shape[:2], dtype=bool)
    r = 0
    while left.any():
        r += 1
        front = left & (dominators < 0.5)
        ranks[front] = r
        left &= ~front
        dominators -= np.matmul(front[:, None, :].astype(np.float32), dom)[:, 0, :]
    return ranks


def bootstrap(df: pd.DataFrame, banks: dict | None = None, b: int = 1000, seed: int = 0,
              paired: bool = True) -> Confidence:
    """B replicates of Table 1 from `df`'s rows and their runs' evidence banks (a complete grid: every variant in
    every setting). `paired=False` draws the prompts of every run independently (what the shared draw gains)."""
    banks = load_banks(df) if banks is None else banks
    rows, prompts, infl, counts = _evidence(df, banks)
    rng = np.random.default_rng(seed)
    names = list(METRICS)
    directions = [METRICS[n].direction for n in names]
    variants = sorted(set(rows["variant"]))
    draws = {ds: rng.multinomial(n, np.full(n, 1 / n), size=b).astype(np.float64) for ds, n in prompts.items()}
    seeds = {v: sorted(set(g["seed"])) for v, g in rows.groupby("variant")}
    pick = {v: rng.integers(0, len(s), size=(b, len(s))) for v, s in seeds.items()}  # seeds drawn per variant
    own = {}  # unpaired: each run's own prompt draw
    point = rows[names].to_numpy(np.float64)
    ranks, meta, kept = [], [], []
    for key, g in rows.groupby(SETTING_KEYS, sort=True):
        if set(g["variant"]) != set(variants):
            raise ValueError(f"setting {dict(zip(SETTING_KEYS, key))} lacks variants "
                             f"{sorted(set(variants) - set(g['variant']))}: no intervals for an incomplete grid")
        idx = g.index.to_numpy()
        ds = g["dataset"].iloc[0]
        cnt = np.stack([counts[i] for i in idx], 1)  # (P, R)
        if paired:
            c = draws[ds]
            weight = c @ cnt  # (B, R): resampled samples of each run
            shift = np.stack([c @ np.stack([infl[m][i] for i in idx], 1) for m in names], -1) / weight[..., None]
        else:
            for i in idx:
                if g.at[i, "run_dir"] not in own:
                    own[g.at[i, "run_dir"]] = rng.multinomial(prompts[ds], np.full(prompts[ds], 1 / prompts[ds]),
                                                              size=b).astype(np.float64)
            c = np.stack([own[g.at[i, "run_dir"]] for i in idx])
            weight = np.einsum("rbp,pr->br", c, cnt)
            shift = np.stack([np.einsum("rbp,pr->br", c, np.stack([infl[m][i] for i in idx], 1))
                              for m in names], -1) / weight[..., None]
        values_run = point[idx][None] + shift  # (B, R, M)
        values = np.zeros((b, len(variants), len(names)))
        for j, v in enumerate(variants):
            mine = np.flatnonzero(g["variant"].to_numpy() == v)
            have = g["seed"].to_numpy()[mine].tolist()
            if sorted(have) != seeds[v]:
                raise ValueError(f"setting {dict(zip(SETTING_KEYS, key))}: {v} has seeds {sorted(have)}, elsewhere "
                                 f"{seeds[v]}: no intervals for an incomplete grid")
            per_seed = values_run[:, [mine[have.index(s)] for s in seeds[v]]]  # (B, K, M) in seed order
            values[:, j] = np.take_along_axis(per_seed, pick[v][..., None], 1).mean(1)
        ranks.append(_pareto(values, directions))
        kept.append(values)
        meta.append(dict(zip(SETTING_KEYS, key)))
    ranks = np.stack(ranks)  # (S, B, V)
    setting_df = pd.DataFrame(meta)
    scores = {}
    for column in TABLE1_COLUMNS[1:]:
        sel = column_rows(setting_df.assign(_i=range(len(setting_df))), column)["_i"].to_numpy()
        if len(sel):
            scores[column] = ranks[sel].mean(0)
    families = dict(zip(rows["variant"], rows["family"]))
    return Confidence(variants, scores, rank_table(df), {v: len(s) for v, s in seeds.items()}, prompts, setting_df,
                      np.stack(kept), tuple(names), families)


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


Z80 = 0.8416212335729143  # the normal quantile of 80% power


def _prompt_means(df: pd.DataFrame, banks: dict) -> pd.DataFrame:
    """Per results row and metric: the per-prompt mean influence u_p (the metric moves by mean_p(u) under a prompt
    draw): rows with `u__<metric>` (P,) arrays."""
    rows, _, infl, counts = _evidence(df, banks)
    for m in METRICS:
        rows[f"u__{m}"] = [g / np.maximum(c, 1) for g, c in zip(infl[m], counts)]
    return rows


def variances(df: pd.DataFrame, banks: dict | None = None) -> pd.DataFrame:
    """The sweep's measured variation, per data set and metric: `sample_sd` (one prompt's paired difference between
    two variants), `seed_sd` (between training seeds of one variant, beyond the sample noise; NaN with one seed), and
    the `prompts` (distinct), `samples` (per setting) and `seeds` (per variant, the fewest) it was measured with."""
    banks = load_banks(df) if banks is None else banks
    rows = _prompt_means(df, banks)
    out = []
    for ds, part in rows.groupby("dataset", sort=False):
        prompts = len(part.iloc[0][f"u__{next(iter(METRICS))}"])
        seeds = int(part.groupby("variant")["seed"].nunique().min())
        for m in METRICS:
            pair_var, seed_var = [], []
            for _, g in part.groupby(SETTING_KEYS):
                for _, same_seed in g.groupby("seed"):  # one run per variant: a sweep's paired comparison
                    u = np.stack(list(same_seed[f"u__{m}"]))  # (V, P)
                    d = (u[:, None, :] - u[None, :, :])[np.triu_indices(len(u), 1)]  # every pair, per prompt
                    if len(d):
                        pair_var.append(d.var(axis=1, ddof=1).mean())
                for _, h in g.groupby("variant"):  # pairs of seeds on the same prompts and noise: what of their
                    vals, us = h[m].to_numpy(), list(h[f"u__{m}"])  # difference the paired prompt noise explains
                    for k in range(len(vals)):
                        for j in range(k + 1, len(vals)):
                            diff = us[k] - us[j]
                            seed_var.append((vals[k] - vals[j]) ** 2 / 2 - diff.var(ddof=1) / (2 * len(diff)))
            s2 = float(np.mean(pair_var))
            t2 = max(0.0, float(np.mean(seed_var))) if seed_var else np.nan
            out.append({"dataset": ds, "metric": m, "prompts": prompts, "samples": int(part["n_samples"].iloc[0]),
                        "seeds": seeds, "sample_sd": np.sqrt(s2),
                        "seed_sd": np.sqrt(t2)})
    return pd.DataFrame(out)


def resolution(v: pd.DataFrame, prompts: int | None = None, seeds: int | None = None,
               alpha: float = 0.05) -> pd.DataFrame:
    """`variances`' rows with `mde`: the smallest difference of two variants' means told apart at `alpha` (two-sided)
    with 80% power, at `prompts` samples per setting and `seeds` training seeds per variant (default: the ones the
    variances were measured with). Without a measured seed-to-seed variation it counts the sampling noise alone."""
    out = v.copy()
    if prompts is not None:
        out["prompts"] = int(prompts)
    if seeds is not None:
        out["seeds"] = int(seeds)
    seed_term = np.where(np.isnan(out["seed_sd"]), 0.0, 2 * out["seed_sd"] ** 2 / out["seeds"])
    out["mde"] = (norm.ppf(1 - alpha / 2) + Z80) * np.sqrt(out["sample_sd"] ** 2 / out["prompts"] + seed_term)
    return out


def sweep_variances(source: str | Path) -> pd.DataFrame:
    """`variances` of a finished sweep with evidence banks: the reference a planned sweep's resolution is read from.
    A sweep without them, or without results, is refused in one line (ValueError)."""
    df, _ = collect(source)
    df = df[~posthoc_rows(df)]  # the fixed EMA's and raw weights' rows
    if not len(df[df["weights"] != REAL]):
        raise ValueError(f"{source}: no results yet")
    banks: dict = {}
    lacking = missing_banks(df, banks)
    if lacking:
        raise ValueError(f"{source}: {len(lacking)} runs have no evidence bank (e.g. {lacking[0]}); rerun its "
                         f"sweep with stage=evaluate")
    return variances(df, banks)


def power(df: pd.DataFrame, banks: dict | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """What the sweep can resolve with its own prompts and seeds: `resolution` of its `variances`."""
    return resolution(variances(df, banks), alpha=alpha)


def needed(p: pd.DataFrame, difference: float, dataset: str, metric: str, alpha: float = 0.05) -> dict:
    """The prompts (at the sweep's seeds) and the seeds (at its prompts) that separate two variants `difference`
    apart in `metric` on `dataset` at `alpha` with 80% power; None where no number of them suffices or, for seeds,
    where the sweep has one seed and so no measure of the seed-to-seed variation (its prompts then count the
    sampling noise alone)."""
    r = p[(p["dataset"] == dataset) & (p["metric"] == metric)].iloc[0]
    budget = (abs(difference) / (norm.ppf(1 - alpha / 2) + Z80)) ** 2  # the variance the comparison may have
    s2, t2 = r["sample_sd"] ** 2, 0.0 if np.isnan(r["seed_sd"]) else r["seed_sd"] ** 2
    left_for_prompts = budget - 2 * t2 / r["seeds"]
    left_for_seeds = budget - s2 / r["prompts"]
    seeds = None if np.isnan(r["seed_sd"]) or left_for_seeds <= 0 else (
        int(np.ceil(2 * t2 / left_for_seeds)) if t2 > 0 else 1)
    return {"prompts": int(np.ceil(s2 / left_for_prompts)) if left_for_prompts > 0 else None, "seeds": seeds}
