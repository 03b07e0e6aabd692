"""``correlate`` (two sweeps' Table 1 ranks, or a sweep's against the paper's), ``compare`` (claims "A is better than
B", tested on the bootstrap's replicates) and ``power`` (the smallest difference a sweep resolves)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.claims import compare, correlation_interval, inside_intervals, shared_prompts
from analysis.commands.sweep_rows import load, pooled, required_banks
from analysis.confidence import bootstrap
from analysis.evidence import missing_banks
from analysis.power import governing, pair_needs, power
from analysis.ranking import common_ranks, metric_agreement, rank_correlation, rank_table
from rfsweep.formulations import build_formulation
from rfsweep.results import REAL


def compare_cmd(args) -> int:
    if len(args.variants) % 2:
        raise ValueError(f"compare takes pairs of variants, A B [C D ...] (got {len(args.variants)} names)")
    df = pooled(args.sweep, args.also, args.weights)
    banks = required_banks(df)
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
    df = pooled(args.sweep, args.also, args.weights)
    banks = required_banks(df)
    p = power(df, banks)
    print("The smallest difference of two variants' means each metric resolves (alpha 0.05, 80% power), from the "
          "sweep's paired per-prompt and seed-to-seed variation:")
    print(p.to_markdown(index=False, floatfmt=".4g"))
    if args.pair:
        a, b = (build_formulation(v).name for v in args.pair)
        needs = pair_needs(df, p, a, b)
        print(f"To separate {a} from {b}, setting by setting (A - B per setting, seeds averaged; None: no number "
              f"suffices):")
        print(needs.to_markdown(index=False, floatfmt=".4g"))
        print("The setting that governs (per data set and metric the smallest difference, the largest need: what "
              "separating them in every setting takes):")
        print(governing(needs).to_markdown(index=False, floatfmt=".4g"))
    return 0


def _correlation_confidence(a, b, published, args) -> None:
    """The correlation's 95% interval (and, against a published table, how many of its rows lie in the sweep's rank
    intervals) when the sweeps have their evidence banks; else one line saying why not. Two sweeps evaluated on the
    same samples of every common data set (`shared_prompts`) are bootstrapped on one prompt draw (paired), their seed
    levels apart (seeds s and s + 1); else wholly with seeds s and s + 1 (independent)."""
    if args.bootstrap <= 0:
        return
    banks_a, banks_b = {}, {}
    lacking = missing_banks(a, banks_a) + (missing_banks(b, banks_b) if b is not None else [])
    if lacking:
        print(f"note: no interval: {len(lacking)} runs have no evidence bank of their results' evaluator (e.g. "
              f"{lacking[0]}); rerun their sweep's command with stage=evaluate", file=sys.stderr)
        return
    conf = bootstrap(a, banks_a, b=args.bootstrap, seed=args.bootstrap_seed)
    if b is None:
        other, how = published, "bootstrap of the sweep against the fixed published table"
    else:
        paired = shared_prompts(a, banks_a, b, banks_b)
        other = bootstrap(b, banks_b, b=args.bootstrap, seed=args.bootstrap_seed + 1,  # its own seed level
                          prompt_seed=args.bootstrap_seed if paired else None)  # and, paired, the same prompt draw
        how = ("paired bootstrap (shared prompt draw)" if paired
               else "independent bootstraps (the sweeps do not share prompts)")
    lo, hi, n = correlation_interval(conf, other, args.column)
    print(f"95% interval of rho: [{lo:.3f}, {hi:.3f}] ({how}, B={args.bootstrap}, {n} variants)")
    k, m = inside_intervals(conf, published, args.column)
    what = "published ranks" if b is None else "averaged ranks of the second sweep"
    print(f"{k} of {m} {what} lie inside the first's 95% intervals of the same variant's averaged rank")


def correlate_cmd(args) -> int:
    if (args.b is None) == (args.paper is None):
        raise ValueError("correlate needs a second sweep or --paper (allowed: A B, or A --paper [FILE])")
    a = pooled(args.a, args.also, args.weights)
    runs = a[a["weights"] != REAL]
    ta = rank_table(a)
    if args.paper is not None:
        tb = pd.read_csv(args.paper)  # the paper's published rows (variant, all, 5 steps, 50 steps)
    else:
        _, b, _ = load(args.b, args.weights)
        tb = rank_table(b)
    rho = rank_correlation(ta, tb, args.column)
    n = len(common_ranks(ta, tb, args.column))
    pooled_seeds = f", seeds {', '.join(map(str, sorted(set(runs['seed'].astype(int)))))} pooled" if args.also else ""
    print(f"spearman rho = {rho:.3f} over {n} common variants (column {args.column!r}{pooled_seeds})")
    _correlation_confidence(a, b if args.paper is None else None, tb, args)
    if args.by_metric:
        agree = metric_agreement(a, tb, args.column)
        print("by data set and metric (each metric alone, best first, averaged over the column's settings):")
        print(agree.to_markdown(index=False, floatfmt=".2f"))
    return 0
