"""What a sweep can resolve (`analysis power`, and a planned sweep's dry run): the paired per-prompt and the
seed-to-seed variation it measured (`variances`; the seed level is `analysis.seed_level`'s pooled estimator), the
smallest difference of two variants' means it tells apart with 80% power (`resolution`, `power`) and the prompts or
seeds that would separate two variants (`needed`), setting by setting (`pair_needs`, `governing`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from analysis.collect import collect
from analysis.ema_choice import posthoc_rows
from analysis.evidence import influence_by_prompt, load_banks, missing_banks
from analysis.ranking import SETTING_KEYS
from analysis.seed_level import SeedLevel
from rfsweep.metrics import ranked_names
from rfsweep.results import REAL

Z80 = 0.8416212335729143  # the normal quantile of 80% power


def variances(df: pd.DataFrame, banks: dict | None = None) -> pd.DataFrame:
    """The sweep's measured variation, per data set and metric: `sample_sd` (one prompt's paired difference between
    two variants: per setting and training seed, the variance over prompts of every pair's per-prompt mean influence
    difference, averaged), `seed_sd` (between training seeds of one variant, beyond the sample noise: the median over
    the data set's backbones and settings of sqrt(tau2), tau2 the seed variance pooled over the variants by
    `analysis.seed_level.SeedLevel`, the bootstrap's own estimator; NaN with one seed), and the `prompts` (distinct),
    `samples` (per setting) and `seeds` (per variant, the fewest) it was measured with."""
    banks = load_banks(df) if banks is None else banks
    rows, _, infl, counts = influence_by_prompt(df, banks)
    names = list(infl)  # the ranking's metrics (`rfsweep.metrics.ranked_names`)
    for m in names:  # the per-prompt mean influence u_p: a prompt draw moves the metric by mean_p(u)
        rows[f"u__{m}"] = [g / np.maximum(c, 1) for g, c in zip(infl[m], counts)]
    level = SeedLevel(rows, rows[names].to_numpy(np.float64),
                      [np.stack([infl[m][i] for m in names]) for i in range(len(rows))],
                      np.array([c.sum() for c in counts]), names)
    tau = level.components.assign(sd=lambda c: np.sqrt(c["tau2"]).where(c["df"] > 0))
    seed_sd = tau.groupby(["dataset", "metric"])["sd"].median()
    out = []
    for ds, part in rows.groupby("dataset", sort=False):
        prompts = len(part.iloc[0][f"u__{names[0]}"])
        seeds = int(part.groupby("variant")["seed"].nunique().min())
        for m in names:
            pair_var = []
            for _, g in part.groupby([*SETTING_KEYS, "seed"]):  # one run per variant: a sweep's paired comparison
                u = np.stack(list(g[f"u__{m}"]))  # (V, P)
                d = (u[:, None, :] - u[None, :, :])[np.triu_indices(len(u), 1)]  # every pair, per prompt
                if len(d):
                    pair_var.append(d.var(axis=1, ddof=1).mean())
            out.append({"dataset": ds, "metric": m, "prompts": prompts, "samples": int(part["n_samples"].iloc[0]),
                        "seeds": seeds, "sample_sd": np.sqrt(float(np.mean(pair_var))),
                        "seed_sd": float(seed_sd.get((ds, m), np.nan))})
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


def pair_needs(df: pd.DataFrame, p: pd.DataFrame, a: str, b: str, alpha: float = 0.05) -> pd.DataFrame:
    """Per setting (SETTING_KEYS) and metric: A's value minus B's (each averaged over its training seeds in that
    setting) and the prompts and seeds that separate them there (`needed`, against the setting's data set's
    per-setting variation `p`, `power`'s rows): a difference is set against the variance it has, not averaged over
    settings first."""
    rows = df[df["weights"] != REAL]
    means = rows[rows["variant"].isin([a, b])].groupby([*SETTING_KEYS, "variant"])[list(ranked_names())].mean()
    out = []
    for key, g in means.groupby(level=SETTING_KEYS):
        g = g.droplevel(SETTING_KEYS)
        if not {a, b} <= set(g.index):
            continue
        setting = dict(zip(SETTING_KEYS, key))
        for m in ranked_names():
            diff = float(g.loc[a, m] - g.loc[b, m])
            out.append({**setting, "metric": m, "difference": diff,
                        **needed(p, diff, setting["dataset"], m, alpha)})
    return pd.DataFrame(out)


def governing(needs: pd.DataFrame) -> pd.DataFrame:
    """Per data set and metric, the setting of `pair_needs` that needs the most (the smallest |difference|: the
    variances are the data set's, so its prompts and seeds are the most): what separating the pair in every setting
    takes; None where no number suffices there."""
    idx = needs.assign(size=needs["difference"].abs()).groupby(["dataset", "metric"], sort=False)["size"].idxmin()
    return needs.loc[idx.to_numpy()].reset_index(drop=True)
