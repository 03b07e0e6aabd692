"""Command line: ``python -m analysis rank-table`` (behind ``make rank-table``), ``correlate``, ``fig4``, ``scaling``,
``status``, ``formulations``, ``compare``, ``power``, ``held-out``, ``race-margins``, ``wandb-dashboard``,
``wandb-sync``."""

# The parser only: each command's code lives in `analysis.commands.<module>` and is imported when that command runs,
# so `--help` and a mistyped option answer at once (no pandas, torch or matplotlib). Shared options: `options`.

from __future__ import annotations

import argparse
import importlib
import sys

from analysis.commands.options import (
    OUT_HELP,
    PAPER_TABLE1,
    SWEEP_OUT_HELP,
    add_also,
    add_bootstrap,
    add_out,
    add_rank_by,
    add_weights,
)
from rfsweep.metrics import METRICS

__all__ = ["PAPER_TABLE1", "build_parser", "main"]


def _command(sub, name: str, target: str, **kw) -> argparse.ArgumentParser:
    """The subcommand `name`, run by `target` ("module:function" of `analysis.commands`), imported when it runs."""
    p = sub.add_parser(name, **kw)
    p.set_defaults(command=target)
    return p


def _rank_table(sub) -> None:
    r = _command(sub, "rank-table", "rank_table:run", help="Table 1, Table 2 and Fig. 3 of a sweep")
    r.add_argument("--results", help="sweep directory or results CSV (default: latest sweep under multirun/)")
    add_out(r, OUT_HELP)
    add_rank_by(r)
    r.add_argument("--allow-incomplete", action="store_true", help="rank even if runs/settings are missing")
    add_weights(r, "rank only these weights (default: both)")
    r.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                   help="log the analysis run to W&B (default: when W&B credentials are configured)")
    r.add_argument("--project", default="rfsweep", help="W&B project (default rfsweep)")
    add_bootstrap(r, "replicates of the rank intervals when the runs have evidence banks (0: none; default 1000)")
    r.add_argument("--unpaired", action="store_true",
                   help="draw every run's prompts independently (to see what the shared draw gains)")
    add_also(r, "another seed's sweep of the same grid, pooled (repeatable): its runs are more seeds")
    r.add_argument("--entity", help="W&B entity")
    r.add_argument("--ema", choices=["fixed", "best"], default="fixed",
                   help="best: every run at its best post-hoc EMA length (eval.ema_lengths), chosen on half the "
                        "prompts and reported on the other, beside the fixed EMA on that half")
    r.add_argument("--select", choices=list(METRICS), help="with --ema best: the metric that chooses each run's "
                   "length (default: the runs' eval.ema_select)")


def _wandb(sub) -> None:
    d = _command(sub, "wandb-dashboard", "wandb_commands:wandb_dashboard_cmd",
                 help="the sweep's W&B report, built as code (--save to create it)")
    d.add_argument("--entity", required=True)
    d.add_argument("--project", default="rfsweep")
    d.add_argument("--group", required=True, help="the experiment name (the runs' W&B group)")
    d.add_argument("--sweep", help="sweep directory: datasets and settings from its manifest")
    d.add_argument("--datasets", default="imagenet,cc12m", help="dataset labels without --sweep")
    d.add_argument("--save", action="store_true", help="create the report on the W&B server")
    y = _command(sub, "wandb-sync", "wandb_commands:wandb_sync_cmd",
                 help="upload every offline W&B run below a sweep (wandb sync)")
    y.add_argument("sweep")
    y.add_argument("--project")
    y.add_argument("--entity")
    y.add_argument("--dry-run", action="store_true", help="list what would be uploaded")


def _correlate(sub) -> None:
    c = _command(sub, "correlate", "comparisons:correlate_cmd",
                 help="Spearman correlation of two sweeps' Table 1 ranks")
    c.add_argument("a", help="sweep directory or results CSV")
    c.add_argument("b", nargs="?", help="sweep directory or results CSV (or --paper)")
    c.add_argument("--paper", nargs="?", const=str(PAPER_TABLE1), default=None,
                   help=f"correlate with the paper's published Table 1 rows (default file: {PAPER_TABLE1.name})")
    c.add_argument("--column", default="all", choices=["all", "5 steps", "50 steps"])
    add_weights(c)
    add_also(c, "another seed's sweep of the same grid, pooled with A (repeatable): each setting's "
                "metrics are averaged over seeds before ranking, as for seeds within one sweep")
    add_bootstrap(c, "replicates of the correlation's interval when the runs have evidence banks (0: none)")
    c.add_argument("--by-metric", action="store_true",
                   help="also show, per data set, how each metric alone (and the Pareto rank) agrees")


def _figures(sub) -> None:
    f = _command(sub, "fig4", "curve_figures:fig4_cmd", help="Fig. 4: validation-loss curves per backbone of a sweep")
    f.add_argument("sweep", help="sweep directory (e.g. multirun/backbone_comparison)")
    add_out(f, SWEEP_OUT_HELP)
    sc = _command(sub, "scaling", "curve_figures:scaling_cmd",
                  help="scaling study: validation loss against training FLOPs, power-law fit")
    sc.add_argument("sweep", help="sweep directory (e.g. multirun/scaling)")
    add_out(sc, SWEEP_OUT_HELP)


def _status(sub) -> None:
    st = _command(sub, "status", "run_status:status_cmd",
                  help="state of every run of a sweep (done, running, pre-empted, failed, ...)")
    st.add_argument("sweep", nargs="?", help="sweep directory (default: latest sweep under multirun/)")
    st.add_argument("--all", action="store_true", help="list finished runs too")
    st.add_argument("--resubmit", action="store_true",
                    help="launch the sweep's command again: only runs that are not done and not running start")


def _formulations(sub) -> None:
    fo = _command(sub, "formulations", "curve_figures:formulations_cmd",
                  help="each formulation's time density, loss weight and effective weight over log-SNR, measured "
                       "from the code that trains, beside the paper's")
    fo.add_argument("variants", nargs="*", help="paper names (default: all 61)")
    fo.add_argument("--shift", type=float, default=1.0, help="the training shift alpha of the rf variants (Sec. 5.3.2)")
    add_out(fo, "output folder (PNG and CSV)", default="analysis_out/formulations")
    fo.add_argument("--n", type=int, default=200_000, help="training draws per variant")


def _compare_power(sub) -> None:
    cp = _command(sub, "compare", "comparisons:compare_cmd",
                  help="claims 'A is better than B': per setting paired differences with intervals, "
                       "P(A dominates B), and P(A ahead in Table 1), Holm-corrected")
    cp.add_argument("sweep")
    cp.add_argument("variants", nargs="+", help="pairs A B [C D ...]: each claims A is better than B")
    add_also(cp, "other seeds' sweeps, pooled")
    add_weights(cp)
    add_bootstrap(cp)
    add_out(cp, "folder for compare.csv")
    pw = _command(sub, "power", "comparisons:power_cmd",
                  help="the smallest difference the sweep resolves per metric, and the prompts and seeds that would "
                       "separate two named variants")
    pw.add_argument("sweep")
    pw.add_argument("--pair", nargs=2, metavar=("A", "B"), help="two variants to separate")
    add_also(pw, "other seeds' sweeps, pooled")
    add_weights(pw)
    ho = _command(sub, "held-out", "held_out:held_out_cmd",
                  help="leave each training seed out in turn: how many of its single-seed Table 1 places the 95%% "
                       "prediction intervals from the other seeds hold (3 seeds or more)")
    ho.add_argument("sweep")
    add_also(ho, "the other seeds' sweeps of the same grid (at least two more)")
    ho.add_argument("--column", default="all", choices=["all", "5 steps", "50 steps"])
    add_weights(ho)
    add_bootstrap(ho)
    add_out(ho, "folder for held_out.csv")
    rm = _command(sub, "race-margins", "race_margins:race_margins_cmd",
                  help="the race's margin per rung, measured jointly on calibration sweeps (e.g. one per seed)")
    rm.add_argument("sweeps", nargs="+", help="calibration sweeps (hydra/sweeper=race hydra.sweeper.calibrate=true)")
    rm.add_argument("--out", required=True, help="folder for race_margins.json (a race's hydra.sweeper.calibration)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_rank_table, _wandb, _correlate, _figures, _status, _formulations, _compare_power):  # --help's order
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, _, function = args.command.partition(":")
    run = getattr(importlib.import_module(f"analysis.commands.{module}"), function)
    try:
        return run(args)
    except (ValueError, OSError) as e:  # ResultsError is a ValueError: bad path, corrupt file, empty grid
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
