"""How sure Table 1 is: a paired, two-level bootstrap over the evidence banks (`rfsweep.evaluation.bank`).

Each replicate draws the prompt indices of each data set once, shared by every variant, seed and setting of that
data set (the samples of prompt i of every run started from the same noise, so the comparison is paired), moves
every (run, setting)'s metrics by that draw (`analysis.evidence`: exact for the CLIP score, first order for FID),
averages each variant's runs over all its training seeds, adds a seed effect drawn from the seed variance pooled
over the variants (`analysis.seed_level`: the seed level that the prompt draw does not already carry), and replays
Table 1 exactly as the point table computes it: non-dominated sorting per setting (`analysis.ranking.pareto_ranks`),
averaged over the settings of each column. With two seeds or more it replays a replication too: each variant's
seeds' mean plus one new run's deviation (`SeedLevel.draw_new_run`), the table a new training seed would give
(`analysis.prediction`). Vectorised over replicates: B x settings x runs in one pass of matrix
products.

What is read from the replicates lives beside it: `analysis.replicates` (the `Confidence` they make, Table 1's
places, Table 2's cells, Fig. 3's bands), `analysis.rank_sets` (marginal intervals, simultaneous sets, the tau-best
set), `analysis.claims` (compare, correlations, Friedman), `analysis.power` (what a sweep resolves). Their public
names are importable from here too.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from analysis.claims import block_ranks, cd_diagram, compare, correlation_interval, friedman, inside_intervals
from analysis.evidence import RESAMPLERS, fid_influence, influence_by_prompt, load_banks, missing_banks
from analysis.power import needed, power, resolution, sweep_variances, variances
from analysis.rank_sets import LEVEL
from analysis.ranking import SETTING_KEYS, TABLE1_COLUMNS, column_rows, rank_table, ranked_metrics
from analysis.replicates import Confidence
from analysis.seed_level import POOL_KEYS, RUN_SETTING, SeedLevel
from rfsweep.metrics import METRICS

__all__ = ["LEVEL", "RESAMPLERS", "Confidence", "block_ranks", "bootstrap", "cd_diagram", "compare",
           "correlation_interval", "fid_influence", "friedman", "inside_intervals", "load_banks", "missing_banks",
           "needed", "power", "resolution", "sweep_variances", "variances"]


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


def _multinomial(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    return rng.multinomial(n, np.full(n, 1 / n), size=b).astype(np.float64)


def prompt_draws(dataset: str, prompts: int, b: int, seed: int) -> np.ndarray:
    """(B, P): the prompt counts of a data set's B replicates, a function of (data set, prompts, B, seed) alone: two
    sweeps that share a data set's prompts and noise, bootstrapped with the same seed, share its draw (a paired
    comparison of the two, as `analysis correlate` makes)."""
    return _multinomial(np.random.default_rng([seed, zlib.crc32(dataset.encode())]), prompts, b)


def bootstrap(df: pd.DataFrame, banks: dict | None = None, b: int = 1000, seed: int = 0,
              paired: bool = True, prompt_seed: int | None = None) -> Confidence:
    """B replicates of Table 1 from `df`'s rows and their runs' evidence banks (a complete grid: every variant in
    every setting, with the same training seeds). `paired=False` draws the prompts of every run independently (what
    the shared draw gains). `prompt_seed` (default `seed`): the seed of the prompt draws alone (`prompt_draws`), so
    two sweeps that share prompts can share them while their seed levels are drawn apart."""
    banks = load_banks(df) if banks is None else banks
    rows, prompts, infl, counts = influence_by_prompt(df, banks)
    rng = np.random.default_rng(seed)
    names = ranked_metrics(df)  # refused in one line, before any work, where a ranked metric has no value
    directions = [METRICS[n].direction for n in names]
    variants = sorted(set(rows["variant"]))
    seeds = {v: sorted(set(g["seed"])) for v, g in rows.groupby("variant")}
    point = rows[names].to_numpy(np.float64)
    groups = list(rows.groupby(SETTING_KEYS, sort=True))
    members = []  # per setting: the rows of each variant, in seed order
    for key, g in groups:
        if set(g["variant"]) != set(variants):
            raise ValueError(f"setting {dict(zip(SETTING_KEYS, key))} lacks variants "
                             f"{sorted(set(variants) - set(g['variant']))}: no intervals for an incomplete grid")
        mine = []
        for v in variants:
            part = g[g["variant"] == v]
            if sorted(part["seed"]) != seeds[v]:
                raise ValueError(f"setting {dict(zip(SETTING_KEYS, key))}: {v} has seeds {sorted(part['seed'])}, "
                                 f"elsewhere {seeds[v]}: no intervals for an incomplete grid")
            mine.append(part.sort_values("seed").index.to_numpy())
        members.append(mine)
    level = SeedLevel(rows, point, [np.stack([infl[m][i] for m in names]) for i in range(len(rows))],
                      np.array([c.sum() for c in counts]), names)
    effects = level.draw(b, rng)
    new_runs = level.draw_new_run(b, np.random.default_rng([seed, 1]))
    draws = {ds: prompt_draws(ds, n, b, seed if prompt_seed is None else prompt_seed) for ds, n in prompts.items()}
    own = {}  # unpaired: each run's own prompt draw
    ranks, meta, kept, predicted = [], [], [], []
    for (key, g), mine in zip(groups, members):
        setting = dict(zip(SETTING_KEYS, key))
        idx = g.index.to_numpy()
        ds = setting["dataset"]
        cnt = np.stack([counts[i] for i in idx], 1)  # (P, R)
        u = np.stack([np.stack([infl[m][i] for i in idx], 1) for m in names], -1)  # (P, R, M)
        if paired:
            c = draws[ds]
            shift = (c @ u.reshape(len(u), -1)).reshape(b, *u.shape[1:]) / (c @ cnt)[..., None]  # (B, R, M)
        else:
            for run in g["run_dir"]:
                if run not in own:
                    own[run] = _multinomial(rng, prompts[ds], b)
            c = np.stack([own[run] for run in g["run_dir"]])  # (R, B, P)
            shift = np.einsum("rbp,prm->brm", c, u) / np.einsum("rbp,pr->br", c, cnt)[..., None]
        values_run = dict(zip(idx, np.moveaxis(point[idx][None] + shift, 1, 0)))  # row -> (B, M)
        pool = tuple(setting[k] for k in POOL_KEYS)
        p = level.pools[pool]
        at = p["settings"].index(tuple(setting[k] for k in RUN_SETTING))
        effect = effects[pool][:, [p["variants"].index(v) for v in variants], at]  # (B, V, M)
        values = np.stack([np.mean([values_run[i] for i in rows_v], 0) for rows_v in mine], 1) + effect
        ranks.append(_pareto(values, directions))
        if new_runs is not None:  # one new seed's runs: the variants' means (point) + how far a new run lands
            means = np.stack([point[rows_v].mean(0) for rows_v in mine])  # (V, M)
            new = new_runs[pool][:, [p["variants"].index(v) for v in variants], at]
            predicted.append(_pareto(means[None] + new, directions))
        kept.append(values)
        meta.append(setting)
    ranks = np.stack(ranks)  # (S, B, V)
    setting_df = pd.DataFrame(meta)
    scores, new_seed = {}, {}
    for column in TABLE1_COLUMNS[1:]:
        sel = column_rows(setting_df.assign(_i=range(len(setting_df))), column)["_i"].to_numpy()
        if len(sel):
            scores[column] = ranks[sel].mean(0)
            if predicted:
                new_seed[column] = np.stack(predicted)[sel].mean(0)
    families = dict(zip(rows["variant"], rows["family"]))
    return Confidence(variants, scores, rank_table(df), {v: len(s) for v, s in seeds.items()}, prompts, setting_df,
                      np.stack(kept), tuple(names), families,
                      level.components if level.measured else pd.DataFrame(), new_seed)
