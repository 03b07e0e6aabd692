"""``rank-table``: a sweep's Table 1, Table 2 and Fig. 3, with rank intervals when its runs have evidence banks,
Friedman's test with pairwise Wilcoxon-Holm tests and the critical-difference diagram, and the W&B analysis run
(``--ema best``: `ema_best`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from analysis.claims import cd_diagram, friedman
from analysis.collect import latest_sweep
from analysis.commands.ema_best import ema_best
from analysis.commands.options import output_folder, rank_by, wants_wandb
from analysis.commands.sweep_rows import load, pooled
from analysis.completeness import missing
from analysis.confidence import bootstrap
from analysis.curves import collect_curves, fig4
from analysis.evidence import missing_banks
from analysis.figures import fig3, fig3_degradation
from analysis.ranking import rank_table
from analysis.tables import table2, with_confidence, write_missing, write_table1, write_table2
from analysis.wandb_study import log_study
from rfsweep.metrics import ranking


def _confidence(df, miss, args, out: Path):
    """The tables' confidence (`analysis.confidence.Confidence`) when every run has its evidence bank and the grid is
    complete; else None, with a note that says why."""
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
          f"seeds per variant {seeds}, prompts {conf.prompts} ({time.perf_counter() - t0:.1f} s); {_seed_level(conf)}; "
          f"mean 95% width: place {place:.2f}, difference of neighbours' averaged ranks {diff:.3f}; P(row ahead of "
          f"column): pairwise.csv; Table 2's cells: table2_intervals.csv", file=sys.stderr)
    if len(conf.seed_variance):
        conf.seed_variance.to_csv(out / "seed_variance.csv", index=False, float_format="%.5g")
    conf.table2_intervals(weights=args.weights or "ema").to_csv(out / "table2_intervals.csv", index=False,
                                                                float_format="%.5g")
    return conf


def _seed_level(conf) -> str:
    """One phrase on the bootstrap's seed level: the pooled seed variance and its degrees of freedom, or why none."""
    v = conf.seed_variance
    if not len(v):
        return ("one training seed per variant: the intervals hold the sampling noise alone (the seed-to-seed "
                "variation is not measured; pool other seeds' sweeps with --also)")
    ratio = (v["tau2"] / v["sampling"].where(v["sampling"] > 0)).groupby(v["metric"]).median()
    return (f"seed level: seed variance pooled over the variants (method of moments, {int(v['df'].min())} degrees "
            f"of freedom per data set and setting; median seed / sampling variance "
            + ", ".join(f"{m} {r:.2g}" for m, r in ratio.items()) + "; seed_variance.csv)")


def _friedman(df, miss, out: Path) -> None:
    """Friedman's test over the data set x backbone blocks, Iman and Davenport's F, the pairwise Wilcoxon-Holm tests
    (wilcoxon_holm.csv) with the smallest p the blocks permit, and the critical-difference diagram (cd.png); or why
    not."""
    if miss:
        print("note: no Friedman test for an incomplete grid", file=sys.stderr)
        return
    try:
        t = friedman(df)
    except ValueError as e:
        print(f"note: no Friedman test: {e}", file=sys.stderr)
        return
    path = cd_diagram(t.mean_ranks, t.pvalues, out / "cd.png")
    t.mean_ranks.rename("mean_rank").sort_values().to_csv(out / "friedman.csv", float_format="%.3f")
    t.pvalues.to_csv(out / "wilcoxon_holm.csv", float_format="%.4g")
    separated, pairs = t.separated()
    if pairs * t.floor >= 0.05:
        verdict = (f"{t.blocks} blocks cannot separate any pair at 5% (the smallest p they permit, 2/2^{t.blocks} = "
                   f"{t.floor:.2g}, times the {pairs} pairs Holm corrects for, is not below 0.05)")
    else:
        verdict = (f"{separated} of {pairs} pairs separated at 5% (the smallest p {t.blocks} blocks permit: "
                   f"2/2^{t.blocks} = {t.floor:.2g}, {pairs * t.floor:.2g} after Holm's first step)")
    print(f"Friedman over {t.blocks} blocks (data set x backbone; each variant's Pareto rank per setting of its "
          f"seed-averaged metrics, averaged over the block's settings): chi2 = {t.chi2:.1f}, p = {t.p:.2g}; Iman-"
          f"Davenport F = {t.f:.2f}, p = {t.p_f:.2g}; pairwise Wilcoxon signed-rank over the blocks, Holm: {verdict} "
          f"(wilcoxon_holm.csv); critical-difference diagram: {path}", file=sys.stderr)


def _fig4(sweep: Path, out: Path) -> dict:
    try:
        return {"fig4": fig4(collect_curves(sweep), out / "fig4.png")}
    except ValueError:  # no validation curves below the sweep
        return {}


def _race(src: Path, manifest: dict, table, conf, out: Path) -> dict:
    """A raced sweep (`analysis.race`): its censored rows and audit under Table 1 (table1.md, table1_censored.csv)
    and its compute against the full grid's (race_compute.json); returns what the W&B analysis run shows of it."""
    import json

    from analysis.race import censored, censored_markdown, compute_line, compute_report, decisions
    from rfsweep.runfolder import read_config

    records = manifest["race"]
    places = conf.table()[["variant", "rank"]] if conf is not None else table.assign(rank=range(1, len(table) + 1))
    with open(out / "table1.md", "a") as f:
        f.write(censored_markdown(records, places))
    censored(records).to_csv(out / "table1_censored.csv", index=False)
    end = next((r for r in records if "end" in r), None)
    shown = {"decisions": decisions(records)}
    if end is None:
        print("note: the race has not ended (no end record in race.jsonl): its grid is incomplete", file=sys.stderr)
        return shown
    runs = manifest.get("race_runs", [])
    batch = int((read_config(src / runs[0]) or {}).get("trainer", {}).get("batch_size", 0)) if runs else 0
    report = compute_report(src, runs, end["max_steps"], batch)
    (out / "race_compute.json").write_text(json.dumps(report, indent=1))
    print(f"race: {len(end['finished'])} variants finished, {len(end['stopped'])} stopped (censored rows under "
          f"Table 1); {compute_line(report)}", file=sys.stderr)
    return {**shown, "compute": report}


def run(args) -> int:
    with ranking(rank_by(getattr(args, "rank_by", None))):  # --rank-by: Table 1, its intervals, Friedman, Fig. 3
        return _run(args)


def _run(args) -> int:
    if args.ema == "best":
        src = Path(args.results) if args.results else latest_sweep()
        return ema_best(args, src, output_folder(args.out, src))
    src, df, manifest = load(args.results, args.weights)
    miss = missing(df, manifest, weights=[args.weights] if args.weights else None)
    for other in args.also:  # other seeds' sweeps of the grid, pooled
        _, other_df, other_manifest = load(other, args.weights)
        miss += missing(other_df, other_manifest, weights=[args.weights] if args.weights else None)
    df = pooled(str(src), args.also, args.weights) if args.also else df
    if miss and not args.allow_incomplete:
        for m in miss:
            print(f"missing: {m}", file=sys.stderr)
        print(f"error: {src}: grid incomplete, {len(miss)} runs/settings missing (listed above); "
              "pass --allow-incomplete to rank anyway", file=sys.stderr)
        return 1
    out = output_folder(args.out, src)
    table = rank_table(df)
    conf = _confidence(df, miss, args, out)
    write_table1(table, out, miss, conf.table() if conf is not None else None)
    race = _race(src, manifest, table, conf, out) if manifest and manifest.get("race") else None
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
    if wants_wandb(args):
        if src.is_dir():
            figures.update(_fig4(src, out))
        experiment = str(manifest.get("experiment") or src.name) if manifest else src.stem
        if (out / "cd.png").is_file():
            figures["cd"] = out / "cd.png"
        shown = with_confidence(table, conf)
        folder = log_study(src, out, experiment, shown, t2 if len(t2) else None, df, miss, figures,
                           project=args.project, entity=args.entity, race=race)
        print(f"logged the analysis run to W&B ({folder})", file=sys.stderr)
    print(f"wrote {out}/" + (f" ({len(miss)} runs/settings missing, see missing.txt)" if miss else ""),
          file=sys.stderr)
    return 0
