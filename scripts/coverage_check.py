"""The coverage of the rank-confidence bootstrap, measured (`python scripts/coverage_check.py [REPS] [B]`, default 100
repetitions per regime, B = 500; about 25 minutes on 2 CPU cores at the defaults): synthetic worlds with a known truth
(`tests/synthetic_evidence.World`: 12 variants, 4 settings (EMA and raw weights at 5 and 50 steps), 200 prompts,
8-dimensional features; CLIP and FID order the variants differently and FID is driven by covariance differences,
with no mean shift), in three regimes:

  (a) one training seed, sampling noise only;
  (b) three seeds, seed / sampling variance ratio 6 (per run, both metrics);
  (c) two seeds, ratio 20.

Per regime: how often the 95% intervals of each pairwise metric difference (per setting, every pair) hold the true
difference (expected CLIP score; expected FID at the sweep's N, and beside it the N -> infinity FID), how often each
variant's marginal place interval and the simultaneous sets (all variants at once) hold the true places, in each of
Table 1's columns, how often the tau-best set (tau = 1) holds every true best, and the mean widths. The Monte-Carlo
error (in brackets) is the standard error over repetitions (each repetition's share counted once: its variants and
pairs are not independent)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.confidence import bootstrap  # noqa: E402
from analysis.rank_sets import marginal_places, simultaneous_places, tau_best  # noqa: E402
from tests.synthetic_evidence import SETTINGS, coverage_world, true_places  # noqa: E402

V = 12
REGIMES = {"a": (1, 0.0), "b": (3, 6.0), "c": (2, 20.0)}  # seeds, seed / sampling variance ratio


def measure(regime: str, reps: int, b: int, boot=bootstrap, draws: int = 300) -> dict:
    seeds, ratio = REGIMES[regime]
    w = coverage_world(ratio, V)
    truth = w.truth(draws=draws)  # (V, S, 2)
    fid_inf = 3 * (w.gain - 1) ** 2  # the N -> infinity FID less what every variant shares
    columns = ["all", "5 steps", "50 steps"]
    places = {c: true_places(truth, SETTINGS, c) for c in columns}
    out = {k: [] for k in ("clip", "fid", "fid_inf", "clip_w", "fid_w", "marg", "marg_w", "sim", "sim_joint",
                           "sim_w", "best", "ratio_clip", "ratio_fid")}
    a, bb = np.triu_indices(V, 1)
    for rep in range(reps):
        df, banks = w.evidence(seeds=seeds, rng_seed=1000 + rep)
        conf = boot(df, banks, b=b, seed=rep)
        sv = getattr(conf, "seed_variance", None)
        for m, key in (("clip_score", "ratio_clip"), ("fid", "ratio_fid")):  # what the sweep itself measures
            part = sv[sv["metric"] == m] if sv is not None and len(sv) else None
            out[key].append(float((part["tau2"] / part["sampling"]).median()) if part is not None else 0.0)
        order = [int(v[1:]) for v in conf.variants]
        setting_of = [SETTINGS.index((r["weights"], r["steps"], r["cfg"])) for r in conf.settings.to_dict("records")]
        cover, width = {0: [], 1: [], 2: []}, {0: [], 1: []}
        for s_conf, s in enumerate(setting_of):
            for m in (0, 1):
                d = conf.values[s_conf][:, a, m] - conf.values[s_conf][:, bb, m]  # (B, pairs)
                lo, hi = np.quantile(d, 0.025, axis=0), np.quantile(d, 0.975, axis=0)
                ia, ib = np.array(order)[a], np.array(order)[bb]
                true = truth[ia, s, m] - truth[ib, s, m]
                cover[m] += list((lo <= true) & (true <= hi))
                width[m] += list(hi - lo)
                if m == 1:
                    inf = fid_inf[ia, s] - fid_inf[ib, s]
                    cover[2] += list((lo <= inf) & (inf <= hi))
        out["clip"].append(np.mean(cover[0]))
        out["fid"].append(np.mean(cover[1]))
        out["fid_inf"].append(np.mean(cover[2]))
        out["clip_w"].append(np.mean(width[0]))
        out["fid_w"].append(np.mean(width[1]))
        marg, marg_w, sim, joint, sim_w, best = [], [], [], [], [], []
        for c in columns:
            reps_c = conf.scores[c]
            point = conf.point.set_index("variant")[c].reindex(conf.variants).to_numpy(np.float64)
            true = places[c][order]
            lo, hi = marginal_places(reps_c)
            slo, shi = simultaneous_places(point, reps_c)
            inside = (slo <= true) & (true <= shi)
            marg.append(np.mean((lo <= true) & (true <= hi)))
            marg_w.append(np.mean(hi - lo))
            sim.append(np.mean(inside))
            joint.append(inside.all())
            sim_w.append(np.mean(shi - slo))
            best.append(tau_best(point, reps_c)[true == 1].all())
        for k, x in zip(("marg", "marg_w", "sim", "sim_joint", "sim_w", "best"),
                        (marg, marg_w, sim, joint, sim_w, best)):
            out[k].append(np.mean(x))
    return {k: (float(np.mean(x)), float(np.std(x, ddof=1) / np.sqrt(len(x)))) for k, x in out.items()}


def report(results: dict, reps: int, b: int) -> str:
    def cell(r, k, digits=3):
        m, se = r[k]
        return f"{m:.{digits}f} ({se:.{digits}f})"

    lines = ["| regime | seed / sampling variance measured: CLIP, FID | CLIP difference | FID difference (E FID_N) | "
             "FID difference (FID_inf) | place, marginal | places, simultaneous (each / all at once) | tau-best holds "
             "the best | widths: CLIP, FID, marginal, simultaneous |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        seeds, ratio = REGIMES[name]
        lines.append(f"| ({name}) {seeds} seed{'s' if seeds > 1 else ''}, ratio {ratio:g} | "
                     f"{r['ratio_clip'][0]:.1f}, {r['ratio_fid'][0]:.1f} | {cell(r, 'clip')} | "
                     f"{cell(r, 'fid')} | {cell(r, 'fid_inf')} | {cell(r, 'marg')} | {cell(r, 'sim')} / "
                     f"{cell(r, 'sim_joint')} | {cell(r, 'best')} | {r['clip_w'][0]:.4f}, {r['fid_w'][0]:.3f}, "
                     f"{r['marg_w'][0]:.2f}, {r['sim_w'][0]:.2f} |")
    return "\n".join(lines) + f"\n\n{reps} repetitions per regime, B = {b}; in brackets the Monte-Carlo standard error."


def main(reps: int = 100, b: int = 500, regimes: str = "abc") -> None:
    results = {}
    for name in regimes:
        t0 = time.perf_counter()
        results[name] = measure(name, reps, b)
        print(f"regime ({name}): {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(report(results, reps, b))


if __name__ == "__main__":
    main(*(int(x) for x in sys.argv[1:3]), *sys.argv[3:4])
