"""A sweep's rows as the commands read them: one sweep (``--results``, a positional sweep), other seeds' sweeps of the
same grid pooled with it (``--also``), and the evidence banks the bootstrap needs, refused in one line when missing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.collect import collect, latest_sweep
from analysis.confidence import missing_banks
from analysis.ema_choice import posthoc_rows
from rfsweep.results import KEYS, REAL, check_one_evaluator


def load(source: str | None, weights: str | None, posthoc: bool = False):
    """A sweep's rows; the post-hoc EMA lengths' rows (phema<sigma_rel>) only with `posthoc` (the tables rank the
    fixed EMA and the raw weights; `rank-table --ema best` the best length)."""
    path = Path(source) if source else latest_sweep()
    df, manifest = collect(path)
    if not posthoc and len(df):
        df = df[~posthoc_rows(df)]
    if weights:
        df = df[df["weights"].isin([weights, REAL])]
    return path, df, manifest


def pooled(first: str, also: list[str], weights: str | None):
    """The rows of a sweep and of other seeds' sweeps of the same grid, pooled (`--also`): a run given twice is
    refused in one line."""
    df = pd.concat([load(s, weights)[1] for s in [first, *also]], ignore_index=True)
    check_one_evaluator(df, " + ".join([first, *also]))
    runs = df[df["weights"] != REAL]  # the reference rows of the real images repeat in every sweep
    if also and runs.duplicated([*KEYS, "seed"]).any():
        raise ValueError(f"--also: {', '.join(also)} repeat(s) runs of {first} (allowed: sweeps of other "
                         f"seeds, e.g. seed=1 name=demo_seed1)")
    return df


def required_banks(df: pd.DataFrame) -> dict:
    """Every run's evidence bank of its results' evaluator (`analysis.confidence.missing_banks`); a run without one
    is refused in one line (ValueError)."""
    banks: dict = {}
    lacking = missing_banks(df, banks)
    if lacking:
        raise ValueError(f"{len(lacking)} runs have no evidence bank of their results' evaluator (e.g. {lacking[0]}); "
                         f"rerun their sweep's command with stage=evaluate")
    return banks
