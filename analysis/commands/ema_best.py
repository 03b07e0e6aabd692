"""``rank-table --ema best``: Table 1 with every run at its best post-hoc EMA length (`analysis.ema_choice`) beside
the fixed EMA on the same half of the prompts, the metrics against sigma_rel per family, and its W&B run."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.commands.options import PAPER_TABLE1, wants_wandb
from analysis.commands.sweep_rows import load, required_banks
from analysis.completeness import missing
from analysis.confidence import bootstrap
from analysis.ema_choice import best_ema, fig_lengths, length_curves, posthoc_rows
from analysis.ranking import backbone_labels, rank_correlation, rank_table
from analysis.tables import with_confidence, write_table1
from analysis.wandb_study import log_ema_choice
from rfsweep.results import FIT_ERROR, REAL, posthoc_weights


def ema_best(args, src: Path, out: Path) -> int:
    """Table 1 with every run at its best post-hoc EMA length (chosen per setting on half the prompts, reported on
    the other half) beside the fixed EMA on the same half; the metrics against sigma_rel per family."""
    frames, miss, planned, manifests = [], [], set(), []
    for sweep in [str(src), *args.also]:
        _, part, manifest = load(sweep, None, posthoc=True)
        frames.append(part)
        manifests.append(manifest)
        miss += missing(part[~posthoc_rows(part)], manifest, weights=["ema"])  # runs that never finished, too
        planned |= {(posthoc_weights(s), st, c) for s in (manifest or {}).get("ema_lengths", [])
                    for st, c in manifest["settings"]}  # the lengths the sweep asked for, evaluated or not
    df = pd.concat(frames, ignore_index=True)
    banks = required_banks(df)
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
    chosen = best[best["weights"] != REAL].reindex(columns=["variant", "family", "dataset", "backbone", "seed", "steps",
                                                             "cfg", "sigma_rel", FIT_ERROR, "select", "select_value",
                                                             "run_dir"])
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
    if wants_wandb(args):
        experiment = str((manifests[0] or {}).get("experiment") or src.name)
        shown = {"table1": with_confidence(tables["ema_best"], confs.get("ema_best")),
                 "fixed_half": with_confidence(tables["ema_fixed_half"], confs.get("ema_fixed_half")),
                 "choices": chosen, "lengths": curves}
        folder = log_ema_choice(src, out, experiment, shown,
                                out / "ema_lengths.png", args.select, project=args.project, entity=args.entity)
        print(f"logged the post-hoc EMA choice to W&B ({folder})", file=sys.stderr)
    return 0
