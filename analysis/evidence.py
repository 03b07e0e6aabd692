"""What the rank-confidence bootstrap reads from the evidence banks (`rfsweep.evaluation.bank`): which runs have a
bank that matches their results, and each results row's per-prompt influence on each metric.

A metric is resampled through its first-order expansion in the samples' weights (`RESAMPLERS`): exact for the CLIP
score (a mean), the delta method for FID (the derivative of the Frechet distance of the weighted feature statistics,
`fid_influence`) and for KID and CMMD (the derivative of the weighted U-statistic, `mmd2_influence`). The expansion
leaves out the upward bias that duplicated samples give a resampled FID; that bias grows with a run's covariance
mismatch, so it is not the same for every variant (Chong & Forsyth 2020: FID_N = FID_inf + k / N with a k of each
generator). `fill_from_banks` computes from the banks the metrics that results written before them lack.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rfsweep.evaluation.bank import BANK_FILE, EvidenceBank, SampleEvidence, setting_key
from rfsweep.evaluation.statistics import (
    CMMD_SCALE,
    _psd_sqrt,
    feature_stats,
    gaussian_kernel,
    mmd2_influence,
    polynomial_kernel,
)
from rfsweep.metrics import METRICS, Evidence, ranked_names
from rfsweep.results import REAL


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
    mu_r, _, r, _ = reference
    return fid_influence(e.features.float().numpy(), mu_r, sigma_r_sqrt=r)


def _kid(e: SampleEvidence, reference) -> np.ndarray:
    return mmd2_influence(e.features, reference[3], polynomial_kernel)


def _cmmd(e: SampleEvidence, reference) -> np.ndarray:
    return CMMD_SCALE * mmd2_influence(e.features, reference[3], gaussian_kernel)


# metric name -> (sample evidence, reference (mu, sigma, sigma^1/2, features)) -> each sample's influence on its value
# FID_inf moves with the samples as FID does, to first order (its fitted 1 / N slope is a second-order term)
RESAMPLERS = {"clip_score": _clip, "fid": _fid, "fid_inf": _fid, "kid": _kid, "cmmd": _cmmd}


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


def influence_by_prompt(df: pd.DataFrame, banks: dict):
    """(rows, prompts per data set, influence, counts): per results row (its point values are the row's), each
    metric's influence summed per prompt (P,) and the samples per prompt (P,). A prompt draw with counts c (P,) moves
    a row's metric by c . influence / c . counts, exactly for the CLIP score and to first order for the others. The
    metrics are those the ranking uses (`rfsweep.metrics.ranked_names`)."""
    names = ranked_names()
    unknown = [m for m in names if m not in RESAMPLERS]
    if unknown:
        raise ValueError(f"metrics {unknown} have no bootstrap (allowed: a RESAMPLERS entry in analysis.evidence)")
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
    infl = {m: [] for m in names}
    counts, refs = [], {}
    for run, weights, steps, cfg, ds in zip(rows["run_dir"], rows["weights"], rows["steps"], rows["cfg"],
                                            rows["dataset"]):
        bank = banks[run]
        e = bank.settings[setting_key(weights, steps, cfg)]
        if run not in refs:
            mu_r, sigma_r = feature_stats(bank.reference.float().numpy())
            needs_sqrt = any(RESAMPLERS[m] is _fid for m in names)  # FID and FID_inf
            refs[run] = (mu_r, sigma_r, _psd_sqrt(sigma_r) if needs_sqrt else None, bank.reference)
        p = e.prompt.numpy()
        counts.append(np.bincount(p, minlength=prompts[ds]).astype(np.float64))
        for m in names:
            infl[m].append(np.bincount(p, weights=RESAMPLERS[m](e, refs[run]), minlength=prompts[ds]))
    return rows, prompts, infl, counts


def fill_from_banks(df: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """`df` with the `metrics` (default: the ranked ones, `ranked_names`) its rows lack (NaN: results written before
    the metric was registered, e.g. KID and CMMD) computed from each run's evidence bank where it matches the run's
    rows (`missing_banks`): the metric's `compute` on the bank's fp16 features of the samples and of the reference
    images (an evaluation computes them on its full-precision sample features: the two differ in the last digits).
    Elsewhere they stay NaN (the ranking refuses them by name: `analysis.ranking.ranked_metrics`). Only what is
    ranked is filled: FID_inf, KID and CMMD cost seconds per setting at d = 768."""
    names = [m for m in (ranked_names() if metrics is None else metrics) if m in df.columns]
    if not names:
        return df
    gap = (df["weights"] != REAL) & df[names].isna().any(axis=1)
    if not gap.any() or "evaluator" not in df.columns:  # no evaluator recorded: no bank can match
        return df
    banks: dict = {}
    missing_banks(df[df["run_dir"].isin(set(df.loc[gap, "run_dir"]))], banks)
    out, refs = df.copy(), {}
    for i in df.index[gap & df["run_dir"].astype(str).isin(banks)]:
        run = str(df.at[i, "run_dir"])
        bank = banks[run]
        if run not in refs:
            refs[run] = feature_stats(bank.reference)
        e = bank.settings[setting_key(df.at[i, "weights"], df.at[i, "steps"], df.at[i, "cfg"])]
        evidence = Evidence(e.features, None, *refs[run], bank.reference)
        for m in names:
            if pd.isna(df.at[i, m]):
                out.at[i, m] = float(METRICS[m].compute(evidence))
    return out
