"""The training-seed level of the rank-confidence bootstrap: a seed variance pooled over the variants, and the seed
effects drawn from it.

Model of one results value (a run j, k of variant j with training seed k, in one sampler setting, one metric):
y_jk = mu_j + a_jk + e_jk, with a_jk the seed's effect (variance tau^2, the same for every variant of a data set and
backbone) and e_jk the sampling noise of the run's prompts and noise. The runs share prompts and noise (sample i of
every run starts from the same noise), so a prompt draw moves every run alike and only the part of e that differs
between runs has to come from somewhere else: that is what the bootstrap's shared prompt draw (`analysis.confidence`)
already carries. Resampling each variant's seeds on top of it counted e twice and rested on its own K - 1 degrees of
freedom; here the seed level adds only what the prompt draw lacks:

    tau^2 = max(0, [sum_j sum_k (y_jk - ybar_j)^2 - sum_j sum_k w_jk] / sum_j (K_j - 1))

per (data set, backbone, sampler setting, metric), pooled over the variants with K_j >= 2 seeds: the between-seed sum
of squares minus its expected sampling part, with w_jk = sum_p d_p^2 - (sum_p d_p)^2 / P the variance that a
multinomial draw of the P prompts gives the run's deviation from its variant's mean (d_p = u_jkp - ubar_jp; u: the
run's influence summed per prompt, already divided by its N samples).
Method of moments on sum_j (K_j - 1) degrees of freedom (61 with the demo's 61 variants and two seeds, 122 with three).

The draw: each run's residual vector r_jk = (y_jk - ybar_j) sqrt(K_j / (K_j - 1)) over the settings and metrics of
its data set and backbone (so a seed that is good in one setting stays good in the others, and in both metrics), one
pool per data set and backbone; a variant's seed effect in a replicate is the mean of K_j residuals drawn from the
pool with replacement, rescaled per setting and metric by sqrt(tau^2 / mean(r^2)). Its bootstrap variance is
tau^2 / K_j, and with the prompt draw the variance of a variant's mean is tau^2 / K + v / K as it should be. The
draws are then widened by t_df / z (`small_sample`): tau^2 rests on df degrees of freedom, which a percentile
interval of a normal draw would ignore (with 12 variants and two seeds a 95% interval would hold 0.93 of the time). A
variant with one seed gets tau^2 / 1 from the others' seeds. With one seed everywhere nothing measures tau: the
seed level is absent and the intervals hold the sampling noise alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm
from scipy.stats import t as student_t


def small_sample(df: int, level: float = 0.95) -> float:
    """t_df / z at `level` (two-sided): the factor on the seed draws that widens a 95% interval by what estimating
    tau^2 on `df` degrees of freedom costs (1.11 at 12, 1.02 at 61); exact where the seeds dominate, conservative
    where the sampling noise (known on many more degrees of freedom) is a large part."""
    return float(student_t.ppf((1 + level) / 2, df) / norm.ppf((1 + level) / 2))


POOL_KEYS = ["dataset", "backbone"]  # one training run: its settings and metrics share its seed effect
RUN_SETTING = ["weights", "steps", "cfg"]


def _keys(rows: pd.DataFrame, cols: list[str]) -> list[tuple]:
    return list(zip(*(rows[c] for c in cols)))


class SeedLevel:
    """The pooled seed variance of a sweep's runs (`components`: one row per pool, setting and metric with the
    between-seed variance, its sampling part, tau2 and the degrees of freedom) and the seed effects drawn from it
    (`draw`).

    `rows`: results rows (one per run and setting) with `variant`, `seed`, POOL_KEYS and RUN_SETTING; `values`
    (R, M) their metric values; `influence` (R, M, P) each row's influence summed per prompt and `samples` (R,) its
    samples (`analysis.evidence.influence_by_prompt`): a prompt draw c moves row i by about (c - 1) . influence_i /
    samples_i."""

    def __init__(self, rows: pd.DataFrame, values: np.ndarray, influence: list[np.ndarray], samples: np.ndarray,
                 metrics: list[str]):
        self.metrics = list(metrics)
        self.pools: dict[tuple, dict] = {}
        table = []
        pool_keys, setting_keys = _keys(rows, POOL_KEYS), _keys(rows, RUN_SETTING)
        for pool in sorted(set(pool_keys), key=str):
            idx = [i for i, p in enumerate(pool_keys) if p == pool]
            settings = sorted({setting_keys[i] for i in idx}, key=str)
            seeds: dict[str, list] = {}
            for i in idx:
                seeds.setdefault(rows["variant"].iat[i], set()).add(rows["seed"].iat[i])
            variants = sorted(seeds)
            seeds = {v: sorted(seeds[v]) for v in variants}
            runs = [(v, s) for v in variants for s in seeds[v]]
            r_pos, s_pos = {r: n for n, r in enumerate(runs)}, {s: n for n, s in enumerate(settings)}
            n_prompts = len(influence[idx[0]][0])
            y = np.full((len(runs), len(settings), len(self.metrics)), np.nan)
            u = np.zeros((len(runs), len(settings), len(self.metrics), n_prompts))
            for i in idx:
                r, a = r_pos[(rows["variant"].iat[i], rows["seed"].iat[i])], s_pos[setting_keys[i]]
                y[r, a], u[r, a] = values[i], influence[i] / samples[i]
            k = np.array([len(seeds[v]) for v, _ in runs])
            owner = np.array([variants.index(v) for v, _ in runs])
            many = k >= 2
            df = int(sum(len(s) - 1 for s in seeds.values()))
            dev = y - np.stack([y[owner == j].mean(0) for j in range(len(variants))])[owner]  # (runs, S, M)
            du = u - np.stack([u[owner == j].mean(0) for j in range(len(variants))])[owner]  # (runs, S, M, P)
            w = (du ** 2).sum(-1) - du.sum(-1) ** 2 / n_prompts  # a multinomial prompt draw's variance of dev
            between = (dev ** 2).sum(0) / df if df else np.full(y.shape[1:], np.nan)
            sampled = w.sum(0) / df if df else np.full(y.shape[1:], np.nan)
            tau2 = np.maximum(0.0, between - sampled)
            resid, scale = None, None
            if df:
                resid = dev[many] * np.sqrt(k[many] / (k[many] - 1))[:, None, None]
                spread = (resid ** 2).mean(0)
                scale = np.sqrt(np.divide(tau2, spread, out=np.zeros_like(tau2), where=spread > 0)) * small_sample(df)
                new_spread = np.divide(between, spread, out=np.zeros_like(between), where=spread > 0)
                new_scale = np.sqrt(np.maximum(new_spread, 0.0)) * small_sample(df)
            else:
                new_scale = None
            self.pools[pool] = {"settings": settings, "variants": variants, "k": {v: len(seeds[v]) for v in variants},
                                "resid": resid, "scale": scale, "new_scale": new_scale}
            for a, setting in enumerate(settings):
                for m, name in enumerate(self.metrics):
                    table.append({**dict(zip(POOL_KEYS, pool)), **dict(zip(RUN_SETTING, setting)), "metric": name,
                                  "between": float(between[a, m]), "sampling": float(sampled[a, m]),
                                  "tau2": float(tau2[a, m]), "df": df})
        self.components = pd.DataFrame(table)

    @property
    def measured(self) -> bool:
        """Whether some variant has two seeds or more: else the seed level is absent."""
        return any(p["resid"] is not None for p in self.pools.values())

    def draw(self, b: int, rng: np.random.Generator) -> dict[tuple, np.ndarray]:
        """Per pool, (B, V, S, M) seed effects of each variant's mean in each replicate (zeros without a measured
        seed variance), variants and settings in the pool's order (`pools[pool]["variants"]`, `["settings"]`)."""
        out = {}
        for pool, p in self.pools.items():
            effect = np.zeros((b, len(p["variants"]), len(p["settings"]), len(self.metrics)))
            if p["resid"] is not None:
                for j, v in enumerate(p["variants"]):
                    pick = rng.integers(0, len(p["resid"]), size=(b, p["k"][v]))
                    effect[:, j] = p["resid"][pick].mean(1) * p["scale"]
            out[pool] = effect
        return out

    def draw_new_run(self, b: int, rng: np.random.Generator) -> dict[tuple, np.ndarray] | None:
        """Per pool, (B, V, S, M): how far one new run of each variant (a new training seed, evaluated on the same
        prompts and noise) lands from its variant's mean over the sweep's K seeds: the run's own deviation (a pooled
        residual) plus the mean's (the mean of K residuals), scaled per setting and metric to the between-run
        variance (`between`: tau^2 and the unshared sampling part, which a new run has too, so (1 + 1 / K) between in
        all) and widened by t_df / z. A run-level residual keeps a seed's settings and metrics together. None, for
        every pool, where any pool has no measured seed variance (one seed there: nothing says how far a new seed
        lands, and a table of some data sets alone is not the table a replication gives)."""
        if any(p["resid"] is None for p in self.pools.values()):
            return None
        out = {}
        for pool, p in self.pools.items():
            effect = np.zeros((b, len(p["variants"]), len(p["settings"]), len(self.metrics)))
            for j, v in enumerate(p["variants"]):
                one = p["resid"][rng.integers(0, len(p["resid"]), size=b)]
                mean = p["resid"][rng.integers(0, len(p["resid"]), size=(b, p["k"][v]))].mean(1)
                effect[:, j] = (one + mean) * p["new_scale"]
            out[pool] = effect
        return out
