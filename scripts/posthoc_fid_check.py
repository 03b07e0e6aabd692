"""How far a post-hoc EMA rebuild's profile fit error moves the evaluated metrics
(`python scripts/posthoc_fid_check.py SWEEP [MAX_RUNS]`, a sweep trained with ema=posthoc tracking 0.05 and 0.10).

For each run, at its evaluated step: the tracked sigma_rel = 0.10 EMA (the truth: its own profile, fit error 0)
against rebuilds of 0.10 whose profiles miss 0.10's by known fit errors (`rfsweep.train.posthoc_ema.fit_error`):
the least-squares rebuild from the 0.05 EMA's snapshots alone (36.5% on the demo: without a 0.10 snapshot at the step no
fit is close) and blends a x that rebuild + (1 - a) x the tracked 0.10, weight averages of snapshots like any rebuild,
whose profile error is a x that of the rebuild exactly (a = 0.05 ... 1): the metrics' response to a fit error of that
size, along the direction a rebuild errs in. Each is sampled on the run's evaluation prompts and noise at 25 steps,
CFG 5 (paired: the same prompts and noise), and scored against the same reference. Printed per blend: the median fit
error, the median and largest |FID change| relative to the truth's FID and to the spacing of FID between the sweep's
variants at that setting (the median |FID difference| of variants adjacent in FID, per data set, fixed EMA), and the
same for the CLIP score.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rfsweep.evaluation.protocol import evaluate  # noqa: E402
from rfsweep.evaluation.reference import reference_stats  # noqa: E402
from rfsweep.results import read_results  # noqa: E402
from rfsweep.run.builders import build_module  # noqa: E402
from rfsweep.run.eval_stage import configured_evaluator, held_out_captions  # noqa: E402
from rfsweep.run.preflight import preflight  # noqa: E402
from rfsweep.train.checkpoint_io import load_weights  # noqa: E402
from rfsweep.train.ema import make_ema  # noqa: E402
from rfsweep.train.posthoc_ema import coefficients, fit_error, gamma_of, read_snapshot, snapshot_steps  # noqa: E402

SETTING = (25, 5.0)
BLENDS = (0.05, 0.1, 0.25, 0.5, 1.0)  # a: the share of the 0.05-only rebuild in the blend


def rebuilt(snaps: dict[int, dict], steps: list[int], step: int, a: float) -> tuple[dict, float]:
    """a x (0.10 at `step` from the 0.05 snapshots at `steps`, least squares) + (1 - a) x the tracked 0.10 there:
    the state and its profile fit error."""
    pairs = [(s, gamma_of(0.05)) for s in steps] + [(step, gamma_of(0.10))]
    ls = coefficients([s for s, _ in pairs[:-1]], [g for _, g in pairs[:-1]], step, gamma_of(0.10))
    x = np.append(a * ls / ls.sum(), 1.0 - a)  # normalised as the rebuild normalises its coefficients
    sources = [snaps[s][0.05] for s in steps] + [snaps[step][0.10]]
    state = {k: sum(float(xi) * src[k].double() for xi, src in zip(x, sources)).float() for k in sources[-1]}
    return state, fit_error([s for s, _ in pairs], [g for _, g in pairs], step, gamma_of(0.10), x)


def check_run(run: Path) -> dict[str, dict]:
    cfg = OmegaConf.create(json.loads((run / "config.json").read_text()))
    module, _ = build_module(cfg, preflight(cfg, data=False), train=False)
    step = load_weights(module, run)["step"]
    found = snapshot_steps(run / "checkpoints" / "posthoc")
    snaps = {s: read_snapshot(files)[1] for s, files in found.items() if s <= step}
    steps = sorted(snaps)
    nets = {"truth": (snaps[step][0.10], 0.0)}
    for a in BLENDS:
        nets[f"a={a:g}"] = rebuilt(snaps, steps, step, a)
    built = {}
    for name, (state, _) in nets.items():
        net = make_ema(module.net)
        net.load_state_dict(state)
        built[name] = net

    def sample_fn(weights, steps_, guidance, captions, seeds):
        return module.generate(captions, steps=steps_, guidance=guidance, shift=cfg.sampler.shift, seed=seeds,
                               weights=built[weights]).float()

    evaluator = configured_evaluator(cfg)
    n = int(cfg.eval.n_samples)
    ref = reference_stats(evaluator, cfg.data.name, "test", cfg.data.resolution, n, cfg.data.seed,
                          cache_dir=Path(cfg.paths.cache), data_path=cfg.data.path)
    rows = evaluate(sample_fn, evaluator, held_out_captions(cfg, n), ref, settings=[SETTING], weights=tuple(built),
                    n_samples=n, batch_size=int(cfg.eval.batch_size), seed=int(cfg.eval.seed))
    out = {r["weights"]: {"fid": r["fid"], "clip_score": r["clip_score"]} for r in rows}
    for name, (_, err) in nets.items():
        out[name]["fit_error"] = err
    return out


def variant_spread(sweep: Path) -> dict[str, dict[str, float]]:
    """Per data set, the median |difference| of each metric between variants adjacent in it (fixed EMA, SETTING)."""
    frames = [read_results(p) for p in sorted(sweep.rglob("results.csv")) if p.parent.parent.name != "rungs"]
    df = pd.concat(frames)
    at = df[(df["weights"] == "ema") & (df["steps"] == SETTING[0]) & ((df["cfg"] - SETTING[1]).abs() < 1e-9)]
    return {ds: {m: float(np.median(np.diff(np.sort(g[m].to_numpy())))) for m in ("fid", "clip_score")}
            for ds, g in at.groupby("dataset")}


def main(sweep: str, max_runs: int = 1000) -> None:
    sweep = Path(sweep)
    jobs = json.loads((sweep / "manifest.json").read_text())["jobs"][:max_runs]
    spread = variant_spread(sweep)
    names = [f"a={a:g}" for a in BLENDS]
    per: dict[str, list] = {name: [] for name in ["truth", *names]}
    torch.set_num_threads(2)
    for k, job in enumerate(jobs):
        res = check_run(sweep / job["run"])
        truth = res["truth"]
        for name, r in res.items():
            per[name].append({"fit_error": r["fit_error"],
                              "fid_rel": abs(r["fid"] - truth["fid"]) / truth["fid"],
                              "fid_spread": abs(r["fid"] - truth["fid"]) / spread[job["dataset"]]["fid"],
                              "clip_spread": abs(r["clip_score"] - truth["clip_score"])
                              / spread[job["dataset"]]["clip_score"]})
        print(f"run {k + 1}/{len(jobs)} {job['run']}: " + ", ".join(
            f"{n} fit {r['fit_error']:.1%} FID {r['fid']:.4f}" for n, r in res.items()), file=sys.stderr, flush=True)
    print(f"{len(jobs)} runs of {sweep}, 0.10 with a profile fit error, at {SETTING[0]} steps, CFG {SETTING[1]:g}; "
          f"|change| against the tracked 0.10 (median / largest over the runs)")
    print("| blend a | fit error (median) | FID change / FID | FID change / variant spacing | "
          "CLIP change / variant spacing |")
    print("|---|---|---|---|---|")
    for name in names:
        rows = per[name]
        col = {c: np.array([r[c] for r in rows]) for c in rows[0]}
        print(f"| {name} | {np.median(col['fit_error']):.1%} | {np.median(col['fid_rel']):.2%} / "
              f"{col['fid_rel'].max():.2%} | {np.median(col['fid_spread']):.2f} / {col['fid_spread'].max():.2f} | "
              f"{np.median(col['clip_spread']):.2f} / {col['clip_spread'].max():.2f} |")


if __name__ == "__main__":
    main(sys.argv[1], *(int(x) for x in sys.argv[2:3]))
