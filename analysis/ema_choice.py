"""Every variant at its own best EMA length (EDM2's post-hoc EMA, evaluated as weights phema<sigma_rel>).

The choice must not favour a run by the noise of the prompts it is reported on: each run's length is chosen per
sampler setting on one half of the evaluation prompts (even prompt indices) by the config's `eval.ema_select`
metric, and its metrics are reported from the other half (odd indices), recomputed from the evidence bank. The
reference images split the same way (reference image i is the test image whose caption is prompt i): the choice
sees the even prompts against the even images, the report the odd against the odd, so no prompt index and no
reference image feeds both (a caption text may still occur in both halves: on shapes 151 of 395 distinct test
captions do, on colour_digits 25 of 133).
The fixed-EMA rows are recomputed on the reporting half, so the two tables compare like with like.
A length whose rebuilt profile missed its target (results column `fit_error` above
`rfsweep.train.posthoc_ema.FIT_TOLERANCE`) is not a candidate: a line names it; a setting with no other is refused.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.collect import RESULTS_DIR
from analysis.ranking import PANEL_KEYS, backbone_labels, panels
from rfsweep.evaluation.bank import EvidenceBank, SampleEvidence, setting_key
from rfsweep.evaluation.statistics import feature_stats
from rfsweep.metrics import METRICS, Evidence
from rfsweep.results import FIT_ERROR, REAL, posthoc_sigma_rel
from rfsweep.train.posthoc_ema import FIT_TOLERANCE

SELECT_DEFAULT = "fid"


def posthoc_rows(df: pd.DataFrame) -> pd.Series:
    """Which rows hold post-hoc EMA weights (phema<sigma_rel>)."""
    return df["weights"].map(lambda w: posthoc_sigma_rel(w) is not None)


def _poor(row) -> bool:
    err = row.get(FIT_ERROR, math.nan)
    return err is not None and not math.isnan(err) and err > FIT_TOLERANCE


def _candidates(run: str, steps, cfg, setting: pd.DataFrame, passed_over: dict) -> pd.DataFrame:
    """The setting's post-hoc rows whose fit is good enough to be chosen; the others are counted in `passed_over`
    (weights -> [run-settings, largest fit error])."""
    poor = setting.apply(_poor, axis=1) if FIT_ERROR in setting else pd.Series(False, index=setting.index)
    if poor.all():
        raise ValueError(f"{run}: every post-hoc EMA length at steps {steps}, cfg {cfg:g} fits its profile poorly "
                         f"(fit_error > {FIT_TOLERANCE:.0%}; allowed: at least one within it)")
    for _, row in setting[poor].iterrows():
        seen = passed_over.setdefault(row["weights"], [0, 0.0])
        seen[0], seen[1] = seen[0] + 1, max(seen[1], float(row[FIT_ERROR]))
    return setting[~poor]


def _say_passed_over(passed_over: dict, unchecked: int) -> None:
    if unchecked:
        print(f"warning: {unchecked} post-hoc EMA rows have no fit_error (results written before rows carried it): "
              f"their fit is not checked", file=sys.stderr, flush=True)
    for weights, (n, err) in sorted(passed_over.items()):
        print(f"warning: {weights} not chosen in {n} run-settings: profile fit error up to {err:.1%} > "
              f"{FIT_TOLERANCE:.0%} (rfsweep.train.posthoc_ema.FIT_TOLERANCE)", file=sys.stderr, flush=True)


def _subset(e: SampleEvidence, keep: np.ndarray) -> SampleEvidence:
    k = np.flatnonzero(keep)
    return SampleEvidence(e.features[k], e.similarity[k], e.prompt[k], e.noise_seed[k])


def metrics_of(e: SampleEvidence, reference: tuple, names=None) -> dict[str, float]:
    """The registered metrics (or `names`) of a setting's samples from its evidence (the bank keeps their inputs): the
    CLIP score from the similarities, the others by their `compute` on the features against the reference
    (mu, sigma, the reference images' features)."""
    evidence = Evidence(e.features.float(), None, *reference)
    return {m: float(e.similarity.double().mean()) if m == "clip_score" else float(METRICS[m].compute(evidence))
            for m in (names or METRICS)}


def halves(e: SampleEvidence) -> tuple[np.ndarray, np.ndarray]:
    """(choose, report): the samples of even and of odd prompt indices."""
    even = (e.prompt.numpy() % 2) == 0
    return even, ~even


def reference_halves(features) -> tuple[tuple, tuple]:
    """(choose, report): the reference (mu, sigma, features) of the even and of the odd reference images."""
    feats = features.float()
    out = []
    for part in (feats[0::2], feats[1::2]):
        out.append((*feature_stats(part.numpy()), part.half()))
    return out[0], out[1]


def run_select(results_dir: str) -> str:
    """The run's `eval.ema_select` from its config.json (fid when absent)."""
    try:
        cfg = json.loads((Path(results_dir) / "config.json").read_text())
        return str(cfg.get("eval", {}).get("ema_select") or SELECT_DEFAULT)
    except (OSError, ValueError):
        return SELECT_DEFAULT


def best_ema(df: pd.DataFrame, banks: dict[str, EvidenceBank],
             select: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(best, fixed, banks_b): `best` has one `ema` row per run and setting at the length chosen on the choosing half,
    its metrics from the reporting half (column `sigma_rel`: the length); `fixed` the fixed-EMA rows recomputed on
    the reporting half; both with the real-image rows. `select`: the choosing metric (default: each run's
    eval.ema_select). `banks_b` holds the reporting half's evidence under `ema`
    for each (run, setting) of `best` (for the bootstrap); keyed "<run>#best" and "<run>#fixed"."""
    post = df[posthoc_rows(df)]
    if post.empty:
        raise ValueError("no post-hoc EMA rows (weights phema<sigma_rel>): evaluate with eval.ema_lengths=[...]")
    best, fixed, banks_b, passed_over = [], [], {}, {}
    ema_rows = {(r["run_dir"], int(r["steps"]), float(r["cfg"])): r  # each run's fixed-EMA row per setting
                for r in df[df["weights"] == "ema"].to_dict("records")}
    for run, part in post.groupby("run_dir", sort=False):
        bank = banks[run]
        ref_choose, ref_report = reference_halves(bank.reference)
        chosen_by = select or (run_select(part[RESULTS_DIR].iloc[0]) if RESULTS_DIR in part else SELECT_DEFAULT)
        better = max if METRICS[chosen_by].direction == "max" else min
        b_bank = EvidenceBank(bank.evaluator_id, bank.ckpt_step, bank.reference[1::2], {})  # the reporting half
        f_bank = EvidenceBank(bank.evaluator_id, bank.ckpt_step, bank.reference[1::2], {})
        for (steps, cfg), setting in part.groupby(["steps", "cfg"], sort=False):
            scored = []
            for _, row in _candidates(run, steps, cfg, setting, passed_over).iterrows():
                e = bank.settings[setting_key(row["weights"], steps, cfg)]
                choose, report = halves(e)
                value = metrics_of(_subset(e, choose), ref_choose, [chosen_by])[chosen_by]
                scored.append((value, row, _subset(e, report)))
            value, row, shown = better(scored, key=lambda x: x[0])
            best.append({**row.to_dict(), **metrics_of(shown, ref_report), "weights": "ema",
                         "n_samples": len(shown.prompt), "sigma_rel": posthoc_sigma_rel(row["weights"]),
                         "run_dir": f"{run}#best", "select": chosen_by, "select_value": value})
            b_bank.add("ema", steps, cfg, shown)
            key = setting_key("ema", steps, cfg)
            if key in bank.settings and (run, int(steps), float(cfg)) in ema_rows:  # banked, and its row written
                base = ema_rows[(run, int(steps), float(cfg))]
                e = _subset(bank.settings[key], halves(bank.settings[key])[1])
                fixed.append({**base, **metrics_of(e, ref_report), "n_samples": len(e.prompt),
                              "run_dir": f"{run}#fixed"})
                f_bank.add("ema", steps, cfg, e)
        banks_b[f"{run}#best"], banks_b[f"{run}#fixed"] = b_bank, f_bank
    _say_passed_over(passed_over, int(post[FIT_ERROR].isna().sum()) if FIT_ERROR in post else len(post))
    real = real_half(df[df["weights"] == REAL], banks)
    return (pd.concat([pd.DataFrame(best), real], ignore_index=True),
            pd.concat([pd.DataFrame(fixed), real], ignore_index=True), banks_b)


def real_half(real: pd.DataFrame, banks: dict[str, EvidenceBank]) -> pd.DataFrame:
    """The real-image rows on the reporting half: the odd-index held-out images against the odd reference images
    (what a perfect generator scores beside the reported samples, at their N), from each row's run's bank; a row whose
    bank predates the real images' evidence keeps all images and the full reference (said in one line)."""
    out, kept, unbanked = [], 0, 0
    for _, row in real.iterrows():
        bank = banks.get(str(row.get("run_dir")))
        if bank is None or bank.real is None:
            out.append(row.to_dict())
            kept += bank is not None
            unbanked += bank is None
            continue
        shown = _subset(bank.real, halves(bank.real)[1])
        out.append({**row.to_dict(), **metrics_of(shown, reference_halves(bank.reference)[1]),
                    "n_samples": len(shown.prompt)})
    if kept:
        print(f"warning: {kept} real-image rows use all their images and the full reference (evidence banks written "
              f"before they kept the real images, evaluations before 2026-12-06): they are not the reporting half's",
              file=sys.stderr, flush=True)
    if unbanked:
        print(f"warning: {unbanked} real-image rows use all their images and the full reference (no evidence bank of "
              f"their run_dir among the runs' banks): they are not the reporting half's", file=sys.stderr, flush=True)
    return pd.DataFrame(out, columns=real.columns)


def length_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Each metric against sigma_rel per data set, backbone and family (the median over the family's runs) at every
    setting, from the post-hoc rows' values (all prompts)."""
    post = df[posthoc_rows(df)].assign(sigma_rel=lambda d: d["weights"].map(posthoc_sigma_rel))
    post = post.assign(backbone=backbone_labels(post["backbone"]))
    keys = [*PANEL_KEYS, "family", "steps", "cfg", "sigma_rel"]
    out = post.groupby(keys)[[m for m in METRICS if m in post]].median()
    if FIT_ERROR in post:  # the worst fit among the family's runs: a length poor in any run is not marked best
        out = out.join(post.groupby(keys)[FIT_ERROR].max())
    return out.reset_index()


def best_length(g: pd.DataFrame, metric: str):
    """The index of the best row of one family's curve `g` for `metric` among the lengths that fit their profile
    (fit_error within FIT_TOLERANCE, or not recorded); None when none does."""
    good = g[~g.apply(_poor, axis=1)] if FIT_ERROR in g else g
    values = good[metric].dropna()
    if values.empty:
        return None
    return values.idxmax() if METRICS[metric].direction == "max" else values.idxmin()


def fig_lengths(curves: pd.DataFrame, path: str | Path, steps: int = 25, cfg: float = 5.0) -> Path:
    """Each metric against sigma_rel, one line per family, one panel per metric and data set (and backbone, when the
    curves hold several: `analysis.ranking.panels`), at one setting; a circle at each family's best length among those
    that fit their profile (`best_length`), a cross on each length that fits poorly."""
    import matplotlib  # deferred: matplotlib (~0.5 s) and analysis.figures, only for this figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at = curves[(curves["steps"] == steps) & (curves["cfg"] == cfg)]
    groups, metrics = sorted(panels(at.assign(weights="ema"))), [m for m in METRICS if m in at and at[m].notna().any()]
    fig, axes = plt.subplots(len(metrics), len(groups), figsize=(4.2 * len(groups), 3.2 * len(metrics)),
                             squeeze=False)
    for j, (ds, bb, name) in enumerate(groups):
        for i, m in enumerate(metrics):
            ax = axes[i][j]
            for family, g in at[(at["dataset"] == ds) & (at["backbone"] == bb)].groupby("family"):
                g = g.sort_values("sigma_rel")
                line, = ax.plot(g["sigma_rel"], g[m], marker=".", label=family)
                if FIT_ERROR in g:  # lengths whose profile fits poorly: crossed, never marked best
                    poor = g[g.apply(_poor, axis=1)]
                    ax.plot(poor["sigma_rel"], poor[m], "x", ms=7, color=line.get_color())
                k = best_length(g, m)
                if k is not None:
                    ax.plot(g.loc[k, "sigma_rel"], g.loc[k, m], "o", ms=9, mfc="none", color=line.get_color())
            ax.set_title(f"{name}: {METRICS[m].label} ({steps} steps, cfg {cfg:g})", fontsize=9)
            ax.set_xlabel("sigma_rel (EMA length)")
            ax.set_ylabel(METRICS[m].label + (" (higher better)" if METRICS[m].direction == "max" else
                                              " (lower better)"))
    axes[0][0].legend(fontsize=7)
    from analysis.figures import save_figure  # deferred with matplotlib (above)

    return save_figure(fig, path)
