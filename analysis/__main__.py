"""Command line: ``python -m analysis rank-table`` (behind ``make rank-table``), ``correlate``, ``fig4``, ``scaling``,
``status``, ``formulations``, ``compare``, ``power``, ``wandb-dashboard``, ``wandb-sync``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.collect import collect, latest_sweep
from analysis.completeness import missing
from analysis.figures import fig3, fig3_degradation
from analysis.ranking import backbone_labels, common_ranks, rank_correlation, rank_table
from analysis.tables import table2, with_confidence, write_missing, write_table1, write_table2
from rfsweep.metrics import METRICS
from rfsweep.results import KEYS, MANIFEST_FILE, REAL, SETTINGS, WEIGHTS, check_one_evaluator, posthoc_weights
from rfsweep.wandb_env import has_credentials

PAPER_TABLE1 = Path(__file__).resolve().parent / "data" / "paper_table1.csv"  # the 16 rows PAPER.md gives


def _load(source: str | None, weights: str | None, posthoc: bool = False):
    """A sweep's rows; the post-hoc EMA lengths' rows (phema<sigma_rel>) only with `posthoc` (the tables rank the
    fixed EMA and the raw weights; `rank-table --ema best` the best length)."""
    from analysis.ema_choice import posthoc_rows

    path = Path(source) if source else latest_sweep()
    df, manifest = collect(path)
    if not posthoc and len(df):
        df = df[~posthoc_rows(df)]
    if weights:
        df = df[df["weights"].isin([weights, REAL])]
    return path, df, manifest


def _pooled(first: str, also: list[str], weights: str | None):
    """The rows of a sweep and of other seeds' sweeps of the same grid, pooled (`--also`): a run given twice is
    refused in one line."""
    import pandas as pd

    df = pd.concat([_load(s, weights)[1] for s in [first, *also]], ignore_index=True)
    check_one_evaluator(df, " + ".join([first, *also]))
    runs = df[df["weights"] != REAL]  # the reference rows of the real images repeat in every sweep
    if also and runs.duplicated([*KEYS, "seed"]).any():
        raise ValueError(f"--also: {', '.join(also)} repeat(s) runs of {first} (allowed: sweeps of other "
                         f"seeds, e.g. seed=1 name=demo_seed1)")
    return df


def _confidence(df, miss, args, out: Path):
    """The tables' confidence (`analysis.confidence.Confidence`) when every run has its evidence bank and the grid is
    complete; else None, with a note that says why."""
    import time

    from analysis.confidence import bootstrap, missing_banks

    if args.bootstrap <= 0:
        return None
    if miss:
        print("note: no rank intervals for an incomplete grid", file=sys.stderr)
        return None
    banks = {}
    lacking = missing_banks(df, banks)
    if lacking:
        print(f"note: no rank intervals: {len(lacking)} of {df['run_dir'].nunique()} runs have no evidence bank of "
              f"their results' evaluator (evaluated before the bank existed, or damaged), e.g. {lacking[0]}; rerun "
              f"the sweep's command with stage=evaluate: they are evaluated again, never trained again",
              file=sys.stderr)
        return None
    t0 = time.perf_counter()
    conf = bootstrap(df, banks, b=args.bootstrap, seed=args.bootstrap_seed, paired=not args.unpaired)
    out.mkdir(parents=True, exist_ok=True)
    conf.pairwise().to_csv(out / "pairwise.csv", float_format="%.3f")
    seeds = sorted(set(conf.seeds.values()))
    place, diff = conf.widths()
    print(f"rank intervals: {'independent' if args.unpaired else 'paired'} bootstrap, B={args.bootstrap}, training "
          f"seeds per variant {seeds}, prompts {conf.prompts} ({time.perf_counter() - t0:.1f} s); mean 95% width: "
          f"place {place:.2f}, difference of neighbours' averaged ranks {diff:.3f}; P(row ahead of column): "
          f"pairwise.csv; Table 2's cells: table2_intervals.csv", file=sys.stderr)
    conf.table2_intervals(weights=args.weights or "ema").to_csv(out / "table2_intervals.csv", index=False,
                                                                float_format="%.5g")
    return conf


def _friedman(df, miss, out: Path) -> None:
    """Friedman's test over the ranking settings and the critical-difference diagram (cd.png), or why not."""
    from analysis.confidence import cd_diagram, friedman

    if miss:
        print("note: no Friedman test for an incomplete grid", file=sys.stderr)
        return
    try:
        stat, p, mean_ranks, pvalues = friedman(df)
    except ValueError as e:
        print(f"note: no Friedman test: {e}", file=sys.stderr)
        return
    path = cd_diagram(mean_ranks, pvalues, out / "cd.png")
    mean_ranks.rename("mean_rank").sort_values().to_csv(out / "friedman.csv", float_format="%.3f")
    blocks = df[df["weights"] != REAL].groupby(["dataset", "backbone", "seed"]).ngroups
    print(f"Friedman over {blocks} independent blocks (data set x backbone x seed; each the mean over its settings): "
          f"chi2 = {stat:.1f}, p = {p:.2g}; critical-difference diagram: {path}", file=sys.stderr)


def compare_cmd(args) -> int:
    from analysis.confidence import bootstrap, compare, missing_banks

    if len(args.variants) % 2:
        raise ValueError(f"compare takes pairs of variants, A B [C D ...] (got {len(args.variants)} names)")
    df = _pooled(args.sweep, args.also, args.weights)
    banks = {}
    lacking = missing_banks(df, banks)
    if lacking:
        raise ValueError(f"{len(lacking)} runs have no evidence bank of their results' evaluator (e.g. {lacking[0]}); "
                         f"rerun their sweep's command with stage=evaluate")
    from rfsweep.formulations import build_formulation

    names = [build_formulation(v).name for v in args.variants]
    claims = list(zip(names[::2], names[1::2]))
    summary, per_setting = compare(bootstrap(df, banks, b=args.bootstrap, seed=args.bootstrap_seed), claims)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        per_setting.to_csv(Path(args.out) / "compare.csv", index=False, float_format="%.5g")
    print(per_setting.to_markdown(index=False, floatfmt=".4g"))
    print(summary.to_markdown(index=False, floatfmt=".3f"))
    return 0


def power_cmd(args) -> int:
    import pandas as pd

    from analysis.confidence import missing_banks, needed, power

    df = _pooled(args.sweep, args.also, args.weights)
    banks = {}
    lacking = missing_banks(df, banks)
    if lacking:
        raise ValueError(f"{len(lacking)} runs have no evidence bank of their results' evaluator (e.g. {lacking[0]}); "
                         f"rerun their sweep's command with stage=evaluate")
    p = power(df, banks)
    print("The smallest difference of two variants' means each metric resolves (alpha 0.05, 80% power), from the "
          "sweep's paired per-prompt and seed-to-seed variation:")
    print(p.to_markdown(index=False, floatfmt=".4g"))
    if args.pair:
        from rfsweep.formulations import build_formulation

        a, b = (build_formulation(v).name for v in args.pair)
        rows = []
        for ds, m in zip(p["dataset"], p["metric"]):
            sel = df[(df["dataset"] == ds) & (df["weights"] != REAL)]
            diff = sel[sel["variant"] == a][m].mean() - sel[sel["variant"] == b][m].mean()
            rows.append({"dataset": ds, "metric": m, "difference": diff, **needed(p, diff, ds, m)})
        print(f"To separate {a} from {b} (their mean difference over the settings; None: no number suffices):")
        print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))
    return 0


def ema_best(args, src: Path, out: Path) -> int:
    """Table 1 with every run at its best post-hoc EMA length (chosen per setting on half the prompts, reported on
    the other half) beside the fixed EMA on the same half; the metrics against sigma_rel per family."""
    import pandas as pd

    from analysis.confidence import bootstrap, missing_banks
    from analysis.ema_choice import best_ema, fig_lengths, length_curves, posthoc_rows

    frames, miss, planned, manifests = [], [], set(), []
    for sweep in [str(src), *args.also]:
        _, part, manifest = _load(sweep, None, posthoc=True)
        frames.append(part)
        manifests.append(manifest)
        miss += missing(part[~posthoc_rows(part)], manifest, weights=["ema"])  # runs that never finished, too
        planned |= {(posthoc_weights(s), st, c) for s in (manifest or {}).get("ema_lengths", [])
                    for st, c in manifest["settings"]}  # the lengths the sweep asked for, evaluated or not
    df = pd.concat(frames, ignore_index=True)
    banks: dict = {}
    lacking = missing_banks(df, banks)
    if lacking:
        raise ValueError(f"{len(lacking)} runs have no evidence bank of their results' evaluator (e.g. {lacking[0]}); "
                         f"rerun their sweep's command with stage=evaluate")
    runs = df[posthoc_rows(df)]
    want = planned | {(w, int(st), float(c)) for w, st, c in zip(runs["weights"], runs["steps"], runs["cfg"])}
    want |= {("ema", st, c) for _, st, c in want}  # each length's setting beside the fixed EMA's
    every = df[df["weights"] != REAL].groupby("run_dir")
    miss += [f"{run}: {w} steps={st} cfg={c:g}" for run, part in every for w, st, c in sorted(want - {
        (w, int(st), float(c)) for w, st, c in zip(part["weights"], part["steps"], part["cfg"])})]
    if miss and not args.allow_incomplete:
        for m in miss:
            print(f"missing: {m}", file=sys.stderr)
        print(f"error: {src}: {len(miss)} runs / post-hoc EMA lengths x settings missing (listed above; evaluate "
              f"with the sweep's eval.ema_lengths); pass --allow-incomplete to rank anyway", file=sys.stderr)
        return 1
    best, fixed, halves = best_ema(df, banks, select=args.select)
    tables, confs = {}, {}
    for name, rows in (("ema_best", best), ("ema_fixed_half", fixed)):
        tables[name] = rank_table(rows)
        mine = {run: halves[run] for run in set(rows.loc[rows["weights"] != REAL, "run_dir"])}
        conf = bootstrap(rows, mine, b=args.bootstrap, seed=args.bootstrap_seed) if args.bootstrap > 0 else None
        write_table1(tables[name], out / name, [], conf.table() if conf is not None else None)
        if conf is not None:
            confs[name] = conf
    chosen = best[best["weights"] != REAL][["variant", "family", "dataset", "backbone", "seed", "steps", "cfg",
                                             "sigma_rel", "select", "select_value", "run_dir"]]
    chosen = chosen.assign(run_dir=chosen["run_dir"].str.removesuffix("#best"))
    chosen.to_csv(out / "ema_best" / "choices.csv", index=False)
    curves = length_curves(df)
    curves.to_csv(out / "ema_lengths.csv", index=False)
    fig_lengths(curves, out / "ema_lengths.png")
    paper = pd.read_csv(PAPER_TABLE1)
    rho = {"best vs fixed": rank_correlation(tables["ema_best"], tables["ema_fixed_half"]),
           "best vs paper": rank_correlation(tables["ema_best"], paper),
           "fixed vs paper": rank_correlation(tables["ema_fixed_half"], paper)}
    print((out / "ema_best" / "table1.md").read_text(), end="")
    chosen = chosen.assign(backbone=backbone_labels(chosen["backbone"]))
    spread = chosen.groupby(["backbone", "family"])["sigma_rel"]
    several = chosen["backbone"].nunique() > 1  # each backbone's own (data sets pooled)
    print("median chosen sigma_rel per family: " + ", ".join(
        f"{b + ' ' if several else ''}{f} {v:.3g}" for (b, f), v in spread.median().items()))
    print("spearman (column 'all', EMA settings, reported on the odd-index prompts): "
          + ", ".join(f"{k} {v:.3f}" for k, v in rho.items()))
    print(f"wrote {out}/ema_best, {out}/ema_fixed_half, {out}/ema_lengths.png", file=sys.stderr)
    if args.wandb if args.wandb is not None else has_credentials():
        from analysis.wandb_study import log_ema_choice

        experiment = str((manifests[0] or {}).get("experiment") or src.name)
        shown = {"table1": with_confidence(tables["ema_best"], confs.get("ema_best")),
                 "fixed_half": with_confidence(tables["ema_fixed_half"], confs.get("ema_fixed_half")),
                 "choices": chosen, "lengths": curves}
        folder = log_ema_choice(src, out, experiment, shown,
                                out / "ema_lengths.png", args.select, project=args.project, entity=args.entity)
        print(f"logged the post-hoc EMA choice to W&B ({folder})", file=sys.stderr)
    return 0


def rank_table_cmd(args) -> int:
    if args.ema == "best":
        src = Path(args.results) if args.results else latest_sweep()
        return ema_best(args, src, Path(args.out) if args.out else (src / "analysis" if src.is_dir()
                                                                    else Path("analysis_out")))
    src, df, manifest = _load(args.results, args.weights)
    miss = missing(df, manifest, weights=[args.weights] if args.weights else None)
    for other in args.also:  # other seeds' sweeps of the grid, pooled
        _, other_df, other_manifest = _load(other, args.weights)
        miss += missing(other_df, other_manifest, weights=[args.weights] if args.weights else None)
    df = _pooled(str(src), args.also, args.weights) if args.also else df
    if miss and not args.allow_incomplete:
        for m in miss:
            print(f"missing: {m}", file=sys.stderr)
        print(f"error: {src}: grid incomplete, {len(miss)} runs/settings missing (listed above); "
              "pass --allow-incomplete to rank anyway", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else (src / "analysis" if src.is_dir() else Path("analysis_out"))
    table = rank_table(df)
    conf = _confidence(df, miss, args, out)
    write_table1(table, out, miss, conf.table() if conf is not None else None)
    _friedman(df, miss, out)
    write_missing(out, miss)
    w = args.weights or "ema"
    t2 = table2(df, weights=w, order=list(table["variant"]))
    if len(t2):
        write_table2(t2, out, miss)
    else:
        print(f"note: no Table 2 (no rows at steps=25 cfg=5.0 weights={w})", file=sys.stderr)
    figures = {}
    bands = conf.family_bands(weights=w) if conf is not None else None
    if fig3(df, out / "fig3.png", weights=w, bands=bands) is None:
        print(f"note: no Fig. 3 (no rows at cfg=5.0 weights={w})", file=sys.stderr)
    else:
        figures["fig3"] = out / "fig3.png"
        deg = fig3_degradation(df, weights=w)
        deg.to_csv(out / "fig3.csv", index=False)
        print("Fig. 3, the family that degrades least from the most to the fewest steps (fig3.csv): "
              + ", ".join(f"{r.panel} {r.metric}: {r.family}" for r in deg[deg["least"]].itertuples()), file=sys.stderr)
    print((out / "table1.md").read_text(), end="")
    use_wandb = args.wandb if args.wandb is not None else has_credentials()
    if use_wandb:
        from analysis.wandb_study import log_study

        if src.is_dir():
            figures.update(_fig4(src, out))
        experiment = str(manifest.get("experiment") or src.name) if manifest else src.stem
        if (out / "cd.png").is_file():
            figures["cd"] = out / "cd.png"
        shown = with_confidence(table, conf)
        folder = log_study(src, out, experiment, shown, t2 if len(t2) else None, df, miss, figures,
                           project=args.project, entity=args.entity)
        print(f"logged the analysis run to W&B ({folder})", file=sys.stderr)
    print(f"wrote {out}/" + (f" ({len(miss)} runs/settings missing, see missing.txt)" if miss else ""),
          file=sys.stderr)
    return 0


def _fig4(sweep: Path, out: Path) -> dict:
    from analysis.curves import collect_curves, fig4

    try:
        return {"fig4": fig4(collect_curves(sweep), out / "fig4.png")}
    except ValueError:  # no validation curves below the sweep
        return {}


def wandb_dashboard_cmd(args) -> int:
    from analysis.wandb_study import build_report, describe, ranking_settings

    if args.sweep:
        manifest = json.loads((Path(args.sweep) / MANIFEST_FILE).read_text())
        datasets = list(dict.fromkeys(j["dataset"] for j in manifest["jobs"]))
        settings = ranking_settings(manifest)
    else:
        datasets = args.datasets.split(",")
        settings = ranking_settings({"weights": list(WEIGHTS), "settings": [list(s) for s in SETTINGS]})
    report = build_report(args.entity, args.project, args.group, datasets, settings)
    print(describe(report))
    if args.save:
        report.save()
        print(f"saved: {report.url}")
    return 0


def wandb_sync_cmd(args) -> int:
    import subprocess

    from analysis.wandb_study import offline_run_folders, sync_command

    folders = offline_run_folders(args.sweep)
    if not folders:
        print(f"{args.sweep}: no offline W&B runs below it")
        return 0
    cmd = sync_command(folders, args.project, args.entity, dry_run=args.dry_run)
    print(f"{len(folders)} offline runs: {' '.join(cmd[:8])} ...", flush=True)
    return subprocess.run(cmd).returncode


def _correlation_confidence(a, b, published, args) -> None:
    """The correlation's 95% interval (and, against a published table, how many of its rows lie in the sweep's rank
    intervals) when the sweeps have their evidence banks; else one line saying why not."""
    from analysis.confidence import bootstrap, correlation_interval, inside_intervals, missing_banks

    if args.bootstrap <= 0:
        return
    lacking = missing_banks(a) + (missing_banks(b) if b is not None else [])
    if lacking:
        print(f"note: no interval: {len(lacking)} runs have no evidence bank of their results' evaluator (e.g. "
              f"{lacking[0]}); rerun their sweep's command with stage=evaluate", file=sys.stderr)
        return
    conf = bootstrap(a, b=args.bootstrap, seed=args.bootstrap_seed)
    other = published if b is None else bootstrap(b, b=args.bootstrap, seed=args.bootstrap_seed + 1)
    lo, hi, n = correlation_interval(conf, other, args.column)
    print(f"95% interval of rho: [{lo:.3f}, {hi:.3f}] (paired bootstrap, B={args.bootstrap}, {n} variants)")
    k, m = inside_intervals(conf, published, args.column)
    what = "published ranks" if b is None else "averaged ranks of the second sweep"
    print(f"{k} of {m} {what} lie inside the first's 95% intervals of the same variant's averaged rank")


def correlate_cmd(args) -> int:
    import pandas as pd

    from analysis.ranking import metric_agreement

    if (args.b is None) == (args.paper is None):
        raise ValueError("correlate needs a second sweep or --paper (allowed: A B, or A --paper [FILE])")
    a = _pooled(args.a, args.also, args.weights)
    runs = a[a["weights"] != REAL]
    ta = rank_table(a)
    if args.paper is not None:
        tb = pd.read_csv(args.paper)  # the paper's published rows (variant, all, 5 steps, 50 steps)
    else:
        _, b, _ = _load(args.b, args.weights)
        tb = rank_table(b)
    rho = rank_correlation(ta, tb, args.column)
    n = len(common_ranks(ta, tb, args.column))
    pooled = f", seeds {', '.join(map(str, sorted(set(runs['seed'].astype(int)))))} pooled" if args.also else ""
    print(f"spearman rho = {rho:.3f} over {n} common variants (column {args.column!r}{pooled})")
    _correlation_confidence(a, b if args.paper is None else None, tb, args)
    if args.by_metric:
        agree = metric_agreement(a, tb, args.column)
        print("by data set and metric (each metric alone, best first, averaged over the column's settings):")
        print(agree.to_markdown(index=False, floatfmt=".2f"))
    return 0


def fig4_cmd(args) -> int:
    from analysis.curves import collect_curves, fig4

    curves = collect_curves(args.sweep)
    out = Path(args.out) if args.out else Path(args.sweep) / "analysis"
    path = fig4(curves, out / "fig4.png")
    last = curves.sort_values("step").groupby("backbone").tail(1).sort_values("value")
    curves.to_csv(out / "fig4.csv", index=False)
    print(last[["backbone", "step", "value"]].to_markdown(index=False))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def scaling_cmd(args) -> int:
    from analysis.scaling import collect_scaling, final_points, scaling_figure

    curves = collect_scaling(args.sweep)
    out = Path(args.out) if args.out else Path(args.sweep) / "analysis"
    path, (a, b) = scaling_figure(curves, out / "scaling.png")
    curves.to_csv(out / "scaling.csv", index=False)
    print(final_points(curves).to_markdown(index=False, floatfmt=".4g"))
    print(f"power law of final validation loss: L = {a:.4g} * C^{b:.4f}")
    print(f"wrote {path}", file=sys.stderr)
    return 0


def status_cmd(args) -> int:
    import shlex
    import subprocess

    from analysis.status import resubmit_command, summary, sweep_status

    src = Path(args.sweep) if args.sweep else latest_sweep()
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a sweep directory")
    df = sweep_status(src)
    if df.empty:
        print(f"{src}: no runs and no manifest.json below it")
        return 0
    shown = df if args.all else df[df["state"] != "done"]
    if len(shown):
        shown = shown.dropna(axis=1, how="all")
        print(shown.to_markdown(index=False, floatfmt=".1f"))
    print(f"{src}: {summary(df)}")
    if not args.resubmit:
        return 0
    left = df[~df["state"].isin(["done", "running"])]
    if left.empty:
        print("nothing to resubmit: every run is done or running")
        return 0
    cmd, cwd = resubmit_command(src)
    print(f"resubmitting {len(left)} runs ({', '.join(sorted(set(left['state'])))}); finished and running runs are "
          f"skipped:\n  (cd {shlex.quote(cwd)} && {shlex.join(cmd)})", flush=True)
    return subprocess.run(cmd, cwd=cwd).returncode


def formulations_cmd(args) -> int:
    from analysis.formulation_curves import curves, figure
    from rfsweep.formulations import ALL_VARIANTS, build_formulation

    names = [build_formulation(v).name for v in args.variants] or list(ALL_VARIANTS)  # a bad name: one line
    out = Path(args.out)
    df = curves(names, shift=args.shift, n=args.n)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "formulations.csv", index=False, float_format="%.6g")
    path = figure(df, out / "formulations.png")
    dev = df.drop_duplicates("variant").set_index("variant")["deviation"]
    closed = dev.dropna()
    worst = f"{closed.max():.1%} ({closed.idxmax()})" if len(closed) else "-"
    print(f"{len(names)} variants -> {path}, {out / 'formulations.csv'}; measured effective weight against the "
          f"paper's closed form: largest gap {worst} over bins holding 1% of the draws or more; no closed form: "
          f"{', '.join(dev[dev.isna()].index) or 'none'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rank-table", help="Table 1, Table 2 and Fig. 3 of a sweep")
    r.add_argument("--results", help="sweep directory or results CSV (default: latest sweep under multirun/)")
    r.add_argument("--out", help="output directory (default <sweep>/analysis, or analysis_out/ for a CSV)")
    r.add_argument("--allow-incomplete", action="store_true", help="rank even if runs/settings are missing")
    r.add_argument("--weights", choices=WEIGHTS, help="rank only these weights (default: both)")
    r.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                   help="log the analysis run to W&B (default: when W&B credentials are configured)")
    r.add_argument("--project", default="rfsweep", help="W&B project (default rfsweep)")
    r.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="replicates of the rank intervals when the runs have evidence banks (0: none; default 1000)")
    r.add_argument("--bootstrap-seed", type=int, default=0)
    r.add_argument("--unpaired", action="store_true",
                   help="draw every run's prompts independently (to see what the shared draw gains)")
    r.add_argument("--also", action="append", default=[], metavar="SWEEP",
                   help="another seed's sweep of the same grid, pooled (repeatable): its runs are more seeds")
    r.add_argument("--entity", help="W&B entity")
    r.add_argument("--ema", choices=["fixed", "best"], default="fixed",
                   help="best: every run at its best post-hoc EMA length (eval.ema_lengths), chosen on half the "
                        "prompts and reported on the other, beside the fixed EMA on that half")
    r.add_argument("--select", choices=list(METRICS), help="with --ema best: the metric that chooses each run's "
                   "length (default: the runs' eval.ema_select)")
    r.set_defaults(func=rank_table_cmd)
    d = sub.add_parser("wandb-dashboard", help="the sweep's W&B report, built as code (--save to create it)")
    d.add_argument("--entity", required=True)
    d.add_argument("--project", default="rfsweep")
    d.add_argument("--group", required=True, help="the experiment name (the runs' W&B group)")
    d.add_argument("--sweep", help="sweep directory: datasets and settings from its manifest")
    d.add_argument("--datasets", default="imagenet,cc12m", help="dataset labels without --sweep")
    d.add_argument("--save", action="store_true", help="create the report on the W&B server")
    d.set_defaults(func=wandb_dashboard_cmd)
    y = sub.add_parser("wandb-sync", help="upload every offline W&B run below a sweep (wandb sync)")
    y.add_argument("sweep")
    y.add_argument("--project")
    y.add_argument("--entity")
    y.add_argument("--dry-run", action="store_true", help="list what would be uploaded")
    y.set_defaults(func=wandb_sync_cmd)
    c = sub.add_parser("correlate", help="Spearman correlation of two sweeps' Table 1 ranks")
    c.add_argument("a", help="sweep directory or results CSV")
    c.add_argument("b", nargs="?", help="sweep directory or results CSV (or --paper)")
    c.add_argument("--paper", nargs="?", const=str(PAPER_TABLE1), default=None,
                   help=f"correlate with the paper's published Table 1 rows (default file: {PAPER_TABLE1.name})")
    c.add_argument("--column", default="all", choices=["all", "5 steps", "50 steps"])
    c.add_argument("--weights", choices=WEIGHTS)
    c.add_argument("--also", action="append", default=[], metavar="SWEEP",
                   help="another seed's sweep of the same grid, pooled with A (repeatable): each setting's "
                        "metrics are averaged over seeds before ranking, as for seeds within one sweep")
    c.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="replicates of the correlation's interval when the runs have evidence banks (0: none)")
    c.add_argument("--bootstrap-seed", type=int, default=0)
    c.add_argument("--by-metric", action="store_true",
                   help="also show, per data set, how each metric alone (and the Pareto rank) agrees")
    c.set_defaults(func=correlate_cmd)
    f = sub.add_parser("fig4", help="Fig. 4: validation-loss curves per backbone of a sweep")
    f.add_argument("sweep", help="sweep directory (e.g. multirun/backbone_comparison)")
    f.add_argument("--out", help="output directory (default <sweep>/analysis)")
    f.set_defaults(func=fig4_cmd)
    sc = sub.add_parser("scaling", help="scaling study: validation loss against training FLOPs, power-law fit")
    sc.add_argument("sweep", help="sweep directory (e.g. multirun/scaling)")
    sc.add_argument("--out", help="output directory (default <sweep>/analysis)")
    sc.set_defaults(func=scaling_cmd)
    st = sub.add_parser("status", help="state of every run of a sweep (done, running, pre-empted, failed, ...)")
    st.add_argument("sweep", nargs="?", help="sweep directory (default: latest sweep under multirun/)")
    st.add_argument("--all", action="store_true", help="list finished runs too")
    st.add_argument("--resubmit", action="store_true",
                    help="launch the sweep's command again: only runs that are not done and not running start")
    st.set_defaults(func=status_cmd)
    fo = sub.add_parser("formulations", help="each formulation's time density, loss weight and effective weight over "
                                             "log-SNR, measured from the code that trains, beside the paper's")
    fo.add_argument("variants", nargs="*", help="paper names (default: all 61)")
    fo.add_argument("--shift", type=float, default=1.0, help="the training shift alpha of the rf variants (Sec. 5.3.2)")
    fo.add_argument("--out", default="analysis_out/formulations", help="output folder (PNG and CSV)")
    fo.add_argument("--n", type=int, default=200_000, help="training draws per variant")
    fo.set_defaults(func=formulations_cmd)
    cp = sub.add_parser("compare", help="claims 'A is better than B': per setting paired differences with intervals, "
                                        "P(A dominates B), and P(A ahead in Table 1), Holm-corrected")
    cp.add_argument("sweep")
    cp.add_argument("variants", nargs="+", help="pairs A B [C D ...]: each claims A is better than B")
    cp.add_argument("--also", action="append", default=[], metavar="SWEEP", help="other seeds' sweeps, pooled")
    cp.add_argument("--weights", choices=WEIGHTS)
    cp.add_argument("--bootstrap", type=int, default=1000, metavar="B")
    cp.add_argument("--bootstrap-seed", type=int, default=0)
    cp.add_argument("--out", help="folder for compare.csv")
    cp.set_defaults(func=compare_cmd)
    pw = sub.add_parser("power", help="the smallest difference the sweep resolves per metric, and the prompts and "
                                      "seeds that would separate two named variants")
    pw.add_argument("sweep")
    pw.add_argument("--pair", nargs=2, metavar=("A", "B"), help="two variants to separate")
    pw.add_argument("--also", action="append", default=[], metavar="SWEEP", help="other seeds' sweeps, pooled")
    pw.add_argument("--weights", choices=WEIGHTS)
    pw.set_defaults(func=power_cmd)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # ResultsError is a ValueError: bad path, corrupt file, empty grid
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
