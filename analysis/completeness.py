"""Which runs and sampler settings of the expected grid have no results yet."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from rfsweep.results import REAL, SETTINGS, WEIGHTS


def _norm(x) -> str:
    """Compare manifest and CSV values as text: seed 0, 0.0 and "0" are the same seed."""
    try:
        f = float(x)
        return str(int(f)) if f.is_integer() else str(f)
    except (TypeError, ValueError):
        return str(x)


def _jobs(df: pd.DataFrame, manifest: dict | None) -> list[dict]:
    if manifest is not None:
        return manifest["jobs"]
    pairs = df[["variant", "dataset"]].drop_duplicates()
    return [{"variant": v, "dataset": d} for v in sorted(pairs["variant"].unique())
            for d in sorted(pairs["dataset"].unique())]


def _name(job: dict, keys: Sequence[str]) -> str:
    return " ".join(f"{k}={job[k]}" for k in keys)


def missing(df: pd.DataFrame, manifest: dict | None = None, weights: Sequence[str] | None = None) -> list[str]:
    """Human-readable names of missing runs (``variant=<v> dataset=<d>``) and of missing settings of the
    runs that exist (``variant=<v> dataset=<d> weights=ema steps=5 cfg=5.0``).

    Expected grid: the manifest's jobs x weights x settings; without a manifest, every variant x every
    dataset seen x WEIGHTS x SETTINGS. ``weights`` restricts the check to those weights. Reference rows
    (weights == "real") are not part of the grid.
    """
    df = df[df["weights"] != REAL]
    settings = manifest["settings"] if manifest else list(SETTINGS)
    want_w = list(manifest["weights"] if manifest else WEIGHTS)
    if weights is not None:
        want_w = [w for w in want_w if w in weights]
    jobs = _jobs(df, manifest)
    # name jobs by variant and dataset, plus backbone/seed where the manifest has several of them
    keys = ["variant", "dataset"] + [k for k in ("backbone", "seed")
                                     if len({_norm(j.get(k)) for j in jobs if k in j}) > 1]
    have = df.assign(**{k: df[k].map(_norm) for k in ("variant", "dataset", "backbone", "seed")})
    out = []
    for job in jobs:
        rows = have
        for k in ("variant", "dataset", "backbone", "seed"):
            if k in job:
                rows = rows[rows[k] == _norm(job[k])]
        if rows.empty:
            out.append(_name(job, keys))
            continue
        got = {(w, int(s), round(float(c), 6)) for w, s, c in zip(rows["weights"], rows["steps"], rows["cfg"])}
        for w in want_w:
            for s, c in settings:
                if (w, int(s), round(float(c), 6)) not in got:
                    out.append(f"{_name(job, keys)} weights={w} steps={int(s)} cfg={float(c)}")
    return out
