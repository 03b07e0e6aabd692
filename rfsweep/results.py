"""The results schema: the one home of what an evaluated run writes and the analysis reads.

One row per (run, weights, sampler setting). A run directory holds ``results.csv`` (these rows) and the
sweep root may hold ``manifest.json`` (the jobs the sweep launched). Reference rows (``weights == "real"``,
variant ``"real images"``, family ``"real"``) hold the FID of held-out real images against the reference
images and their CLIP score: the floor under which FID differences mean nothing. They are never ranked.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

from rfsweep.atomic import atomic_write
from rfsweep.errors import ResultsError  # noqa: F401 (raised here, defined in the one home of user errors)
from rfsweep.formulations.variants import FAMILIES
from rfsweep.metrics import METRICS, metric_names

if TYPE_CHECKING:  # pandas (~0.3 s) is imported by the functions that use it: a dry run imports this module, not it
    import pandas as pd

RESULTS_FILE = "results.csv"
MANIFEST_FILE = "manifest.json"

KEYS = ("variant", "family", "dataset", "backbone", "weights", "steps", "cfg")  # one setting of one run
TAIL = ("n_samples", "ckpt_step", "val_loss", "seed", "run_dir")
EVALUATOR = "evaluator"  # optional column: the evaluator's id (files written before it existed lack it)
FIT_ERROR = "fit_error"  # optional column: a post-hoc EMA row's profile fit error (rfsweep.train.posthoc_ema)
OPTIONAL = (EVALUATOR, FIT_ERROR)
UNRECORDED = "unrecorded"


def columns() -> tuple[str, ...]:
    """The schema's columns: the keys, one column per registered metric (`rfsweep.metrics`), the tail."""
    return (*KEYS, *metric_names(), *TAIL)


def unranked_metrics() -> tuple[str, ...]:
    """The metrics a results file may lack or hold NaN for (not `ranked` by default: registered after the paper's
    two, e.g. KID and CMMD): NaN until the analysis fills them from the run's evidence bank."""
    return tuple(m.name for m in METRICS.values() if not m.ranked)


# Sec. 5.1 / App. B.3: Euler sampler, 50 steps at CFG 1.0, 2.5, 5.0; 5, 10, 25 steps at CFG 5.0.
SETTINGS: tuple[tuple[int, float], ...] = ((50, 1.0), (50, 2.5), (50, 5.0), (5, 5.0), (10, 5.0), (25, 5.0))
WEIGHTS = ("ema", "raw")
POSTHOC = "phema"  # weights rebuilt by post-hoc EMA at one length: phema<sigma_rel>, e.g. phema0.05 (eval.ema_lengths)


def posthoc_weights(sigma_rel: float) -> str:
    return f"{POSTHOC}{float(sigma_rel):.4g}"


def posthoc_sigma_rel(weights: str) -> float | None:
    """The sigma_rel of a post-hoc EMA's weights value, else None."""
    if not str(weights).startswith(POSTHOC):
        return None
    try:
        value = float(str(weights)[len(POSTHOC):])
    except ValueError:
        return None
    return value if 1e-4 <= value <= 0.28 else None  # the lengths the schema allows; NaN and inf fail too
REAL = "real"  # weights/family value of reference rows
REAL_VARIANT = "real images"



def setting_name(weights: str, steps: int, cfg: float) -> str:
    """One evaluation setting's name, e.g. ema_steps25_cfg5: sample grid files, W&B keys, dashboard panels."""
    return f"{weights}_steps{int(steps)}_cfg{float(cfg):g}"


_DTYPES = {"steps": "int64", "cfg": "float64", "n_samples": "int64"}


def _frame(rows: pd.DataFrame | Iterable[Mapping]) -> pd.DataFrame:
    import pandas as pd  # deferred: pandas (~0.3 s), not needed by a dry run

    return rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def validate_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Check ``df`` against the schema; return it with columns in schema order and numeric dtypes."""
    import pandas as pd  # deferred: pandas (~0.3 s), not needed by a dry run

    cols = columns()
    later = [m for m in unranked_metrics() if m not in df.columns]  # registered after the file was written
    df = df.assign(**{m: math.nan for m in later}) if later else df
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ResultsError(f"missing columns {missing}; required: {list(cols)}")
    df = df.loc[:, list(cols) + [c for c in OPTIONAL if c in df.columns]].copy()
    if EVALUATOR in df.columns:
        df[EVALUATOR] = _evaluator_column(df)
    numeric = {**_DTYPES, **{m: "float64" for m in metric_names()}}
    numeric.update({FIT_ERROR: "float64"} if FIT_ERROR in df else {})
    for col, dtype in numeric.items():
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() & df[col].notna()
        if bad.any():
            raise ResultsError(f"column {col!r} must be numeric, got {df[col][bad].iloc[0]!r}")
        if dtype == "int64":
            ok = num.map(math.isfinite) & (num == num.round())
            if not ok.all():
                raise ResultsError(f"column {col!r} must hold integers, got {num[~ok].iloc[0]}")
        df[col] = num.astype(dtype)
    for col in ("variant", "family", "dataset", "weights"):
        if df[col].isna().any() or (df[col].astype(str).str.strip() == "").any():
            raise ResultsError(f"column {col!r} must not be empty")
    bad = sorted(w for w in set(df["weights"]) - {*WEIGHTS, REAL} if posthoc_sigma_rel(w) is None)
    if bad:
        raise ResultsError(f"column 'weights' has {bad}; allowed: {[*WEIGHTS, REAL]} or {POSTHOC}<sigma_rel>")
    bad = sorted(set(df["family"]) - {*FAMILIES, REAL})
    if bad:
        raise ResultsError(f"column 'family' has {bad}; allowed: {[*FAMILIES, REAL]}")
    for col in metric_names():
        ok = df[col].map(math.isfinite) | (df[col].isna() if col in unranked_metrics() else False)
        if not ok.all():
            raise ResultsError(f"column {col!r} must be finite, got {df[col][~ok].iloc[0]}")
    if FIT_ERROR in df:
        post = df["weights"].map(lambda w: posthoc_sigma_rel(w) is not None)
        ok = df[FIT_ERROR].isna() | (post & df[FIT_ERROR].map(math.isfinite) & (df[FIT_ERROR] >= 0))
        if not ok.all():
            raise ResultsError(f"column {FIT_ERROR!r} has {df[FIT_ERROR][~ok].iloc[0]} for weights "
                               f"{df['weights'][~ok].iloc[0]!r} (allowed: a finite number >= 0 on {POSTHOC}<sigma_rel> "
                               f"rows, else empty)")
    if (df["n_samples"] < 0).any():
        raise ResultsError("column 'n_samples' must be >= 0")
    if (df["steps"] < 0).any():
        raise ResultsError("column 'steps' must be >= 0 (reference rows may use 0)")
    return df


def write_results(path: str | os.PathLike, rows: pd.DataFrame | Iterable[Mapping]) -> Path:
    """Validate and write rows atomically: a reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    df = validate_rows(_frame(rows))
    with atomic_write(path, "w", newline="") as f:
        df.to_csv(f, index=False)
    return path


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate one results file; any defect raises a one-line ``ResultsError`` naming the path."""
    import pandas as pd  # deferred: pandas (~0.3 s), not needed by a dry run

    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: no such results file")
    try:
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            raise ResultsError("no final newline, the write was cut short")
        df = pd.read_csv(io.BytesIO(raw), keep_default_na=False, na_values=[""],
                         dtype={"variant": str, "family": str, "dataset": str, "backbone": str,
                                "weights": str, "run_dir": str, EVALUATOR: str})
        return validate_rows(df)
    except (OSError, ValueError, pd.errors.ParserError) as e:  # UnicodeDecodeError is a ValueError
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ResultsError(f"{path}: corrupt or truncated results file ({msg})") from e


def _evaluator_column(df: pd.DataFrame) -> pd.Series:
    import pandas as pd  # deferred: pandas (~0.3 s), not needed by a dry run

    if EVALUATOR not in df.columns:
        return pd.Series(UNRECORDED, index=df.index)
    return df[EVALUATOR].fillna(UNRECORDED).astype(str).replace("", UNRECORDED)


def of_evaluator(df: pd.DataFrame, evaluator: str) -> pd.DataFrame:
    """The rows that ``evaluator`` (an id) computed; none of a file written before results named their evaluator."""
    return df[_evaluator_column(df) == evaluator]


def evaluators(df: pd.DataFrame) -> list[str]:
    """The evaluator ids of a frame's rows (``unrecorded`` for rows written before results named it)."""
    return sorted(set(_evaluator_column(df)))


def check_one_evaluator(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Refuse (ResultsError, one line) a frame whose rows come from more than one evaluator: their CLIP scores and
    FIDs are not comparable."""
    col = _evaluator_column(df)
    if col.nunique() > 1:
        counts = ", ".join(f"{i} ({n} rows)" for i, n in col.value_counts().sort_index().items())
        raise ResultsError(f"{where}: results of {col.nunique()} evaluators ({counts}); allowed: one (rerun the "
                           f"sweep with the evaluator wanted: finished runs are re-evaluated, not retrained)")
    return df


def results_complete(path: str | os.PathLike, expected_settings: Iterable[tuple] | None = None,
                     evaluator: str | None = None) -> bool:
    """True if ``path`` exists, parses, and holds every expected setting (computed by ``evaluator``, if given).

    ``expected_settings``: (weights, steps, cfg) triples, or (steps, cfg) pairs meaning every WEIGHTS;
    default SETTINGS. Used by the sweep to skip finished runs.
    """
    expected = list(SETTINGS if expected_settings is None else expected_settings)
    expected = [e for x in expected for e in ([(w, *x) for w in WEIGHTS] if len(x) == 2 else [tuple(x)])]
    try:
        df = read_results(path)
    except ResultsError:
        return False
    if evaluator is not None:
        df = of_evaluator(df, evaluator)
    have = {(w, int(s), round(float(c), 6)) for w, s, c in zip(df["weights"], df["steps"], df["cfg"])}
    return all((w, int(s), round(float(c), 6)) in have for w, s, c in expected)
