"""The options several commands of ``python -m analysis`` share, each defined once (type, default, metavar; a
command may word its help), and the rule that picks a command's output folder.

Light on purpose: the parser imports this module for ``--help``, so it imports the standard library only (and
`rfsweep.wandb_env`, itself standard library only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rfsweep.wandb_env import has_credentials

PAPER_TABLE1 = Path(__file__).resolve().parent.parent / "data" / "paper_table1.csv"  # the 16 rows PAPER.md gives
# rfsweep.results.WEIGHTS: that module costs pandas and torch to import; tests/test_analysis_cli.py holds them equal
WEIGHT_CHOICES = ("ema", "raw")
OUT_HELP = "output directory (default <sweep>/analysis, or analysis_out/ for a CSV)"  # `output_folder`'s rule
SWEEP_OUT_HELP = "output directory (default <sweep>/analysis)"  # the same, for commands that read a sweep folder only


def output_folder(out: str | None, source: Path) -> Path:
    """Where a command writes: ``--out`` when given, else ``<sweep>/analysis`` for a sweep directory, else
    ``analysis_out/`` (a results CSV)."""
    if out:
        return Path(out)
    return source / "analysis" if source.is_dir() else Path("analysis_out")


def add_out(p: argparse.ArgumentParser, help: str = SWEEP_OUT_HELP, default: str | None = None) -> None:
    p.add_argument("--out", default=default, help=help)


def add_weights(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--weights", choices=WEIGHT_CHOICES, help=help)


def add_also(p: argparse.ArgumentParser, help: str) -> None:
    """``--also SWEEP`` (repeatable): other seeds' sweeps of the same grid, pooled with the first."""
    p.add_argument("--also", action="append", default=[], metavar="SWEEP", help=help)


def add_bootstrap(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--bootstrap B`` (replicates, 0: none) and ``--bootstrap-seed``."""
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B", help=help)
    p.add_argument("--bootstrap-seed", type=int, default=0)


def add_rank_by(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rank-by", metavar="M1,M2", help="the metrics Table 1 ranks by, comma-separated (default: "
                   "clip_score,fid, the paper's; also kid, cmmd or any registered metric)")


def rank_by(value: str | None) -> tuple[str, ...] | None:
    """The metrics of ``--rank-by`` (None when not given); an unknown or empty name is a one-line ValueError naming
    the option and the registered metrics."""
    if value is None:
        return None
    from rfsweep.metrics import METRICS  # the registry: standard library only

    names = tuple(n.strip() for n in value.split(","))
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"--rank-by {value}: unknown metric(s) {unknown} (allowed: comma-separated names of "
                         f"{', '.join(METRICS)})")
    return names


def wants_wandb(args: argparse.Namespace) -> bool:
    """``--wandb`` / ``--no-wandb``, else W&B when its credentials are configured."""
    return args.wandb if args.wandb is not None else has_credentials()
