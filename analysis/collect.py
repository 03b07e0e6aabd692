"""Gather the saved results of a sweep (or one CSV of rows) into one validated frame."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from analysis.race_log import DecisionLog
from rfsweep.metrics import ranked_names
from rfsweep.results import (
    KEYS,
    MANIFEST_FILE,
    REAL,
    RESULTS_FILE,
    ResultsError,
    check_one_evaluator,
    columns,
    read_results,
    unranked_metrics,
    validate_rows,
)
from rfsweep.runfolder import RUNGS, config_changes, flatten, read_config


def read_manifest(path: str | os.PathLike) -> dict:
    """Read a sweep manifest ``{"jobs": [{variant, dataset, backbone, seed}], "settings": [[steps, cfg]],
    "weights": [...], "ema_lengths": [...]}``; settings become (int, float) tuples."""
    path = Path(path)
    try:
        m = json.loads(path.read_text())
        jobs = [dict(j) for j in m["jobs"]]
        if any("variant" not in j or "dataset" not in j for j in jobs):
            raise ValueError("every job needs 'variant' and 'dataset'")
        settings = [(int(s), float(c)) for s, c in m["settings"]]
        weights = [str(w) for w in m["weights"]]
        lengths = [float(x) for x in m.get("ema_lengths") or []]  # absent in manifests written before eval.ema_lengths
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ResultsError(f"{path}: corrupt manifest ({type(e).__name__}: {e})") from e
    return {"jobs": jobs, "settings": settings, "weights": weights, "experiment": m.get("experiment"),
            "ema_lengths": lengths}


RESULTS_DIR = "results_dir"  # added by `collect`: the folder a row's results.csv was read from


def collect(source: str | os.PathLike) -> tuple[pd.DataFrame, dict | None]:
    """Rows and manifest of ``source``: a sweep directory (every ``**/results.csv`` below it, and
    ``manifest.json`` at its root if present) or a single CSV file of schema rows (no manifest)."""
    source = Path(source)
    if source.is_file():
        return _filled(check_one_evaluator(read_results(source), str(source))), None
    if not source.is_dir():
        raise ResultsError(f"{source}: no such results file or sweep directory")
    manifest_path = source / MANIFEST_FILE
    manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
    files = [f for f in sorted(source.rglob(RESULTS_FILE)) if f.parent.parent.name != RUNGS]  # a race's rungs: apart
    if manifest is not None:
        manifest = raced(source, manifest)
        if "race_runs" in manifest:  # an ended race: a stopped variant's finished runs (others diverged) are not ranked
            kept = {j["run"] for j in manifest["jobs"]}
            gone = set(manifest["race_runs"]) - kept
            files = [f for f in files if str(f.parent.relative_to(source)) not in gone]
    if not files and manifest is None:
        raise ResultsError(f"{source}: no {RESULTS_FILE} files and no {MANIFEST_FILE} below it")
    frames = [read_results(f) for f in files]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns()))
    if not frames:
        return df, manifest
    out = check_one_evaluator(validate_rows(df), str(source))
    # where each row was read: its run's evidence bank lies beside it, wherever the sweep was moved since
    out[RESULTS_DIR] = [str(f.parent) for f, frame in zip(files, frames) for _ in range(len(frame))]
    check_distinct_runs(out)
    return _filled(out), manifest


def raced(source: Path, manifest: dict) -> dict:
    """A raced sweep's manifest (`analysis.race`): the jobs of the variants the race stopped leave the expected grid
    (Table 1 lists them as censored rows, `manifest["race"]`, never ranked as if complete); a race without its end
    record keeps every job expected (its grid is incomplete)."""
    records = DecisionLog(source).records()
    end = next((r for r in records if "end" in r), None)
    if end is None:
        return manifest if not records else {**manifest, "race": records}
    stopped = set(end["stopped"])
    return {**manifest, "jobs": [j for j in manifest["jobs"] if j["variant"] not in stopped], "race": records,
            "race_runs": [j["run"] for j in manifest["jobs"]]}


def _filled(df: pd.DataFrame) -> pd.DataFrame:
    """The ranked metrics (`rfsweep.metrics.ranked_names`: `--rank-by` may choose one that older results lack, NaN
    there) filled from the runs' evidence banks where they match (`analysis.evidence.fill_from_banks`); the others
    stay as the results have them."""
    if not df[[m for m in unranked_metrics() if m in df and m in ranked_names()]].isna().any().any():
        return df
    from analysis.evidence import fill_from_banks  # deferred: torch and safetensors, only for older results

    return fill_from_banks(df)


def config_difference(a: str | os.PathLike, b: str | os.PathLike) -> list[str]:
    """The keys in which two run folders' config.json differ ("trainer.shift: None vs 3.0"): those that change a
    result, as a resume compares them (`runfolder.config_changes`), else any but the folders; empty when either has
    no config."""
    ca, cb = read_config(a), read_config(b)
    if ca is None or cb is None:
        return []
    fa, fb = flatten(ca), flatten(cb)
    keys = config_changes(ca, cb) or sorted(k for k in fa.keys() | fb.keys() if k.split(".")[0] not in (
        "run_dir", "job_name", "paths") and fa.get(k) != fb.get(k))  # else what a resume may change (max_steps, ...)
    return [f"{k}: {fa.get(k)} vs {fb.get(k)}" for k in keys]


def check_distinct_runs(df: pd.DataFrame) -> None:
    """One run per variant, data set, backbone and seed in a sweep: two run folders with the same of each (e.g. a sweep
    over trainer.shift) would be averaged by the tables as if they were seeds; refused in one line naming both and
    what their configs differ in."""
    runs = df[df["weights"] != REAL]
    key = [*KEYS, "seed"]
    per_run = runs.drop_duplicates([*key, RESULTS_DIR])
    dup = per_run[per_run.duplicated(key, keep=False)]
    if dup.empty:
        return
    first = dup.iloc[0]
    a, b = dup.groupby(key, dropna=False, sort=False)[RESULTS_DIR].unique().iloc[0][:2]  # NaN keys match too
    differ = config_difference(a, b)
    raise ResultsError(f"{a} and {b} both hold {first['variant']} on {first['dataset']} with backbone "
                       f"{first['backbone']}, seed {first['seed']}" + (f", differing in {'; '.join(differ[:3])}"
                                                                         if differ else "")
                       + ": the tables would average them as seeds (allowed: one run per variant, data set, backbone "
                         "and seed in a sweep; run each value of another key as its own sweep, e.g. name=grid_shift3)")


def _is_sweep(d: Path) -> bool:
    return (d / MANIFEST_FILE).is_file() or next(d.rglob(RESULTS_FILE), None) is not None


def latest_sweep(root: str | os.PathLike = "multirun") -> Path:
    """The most recently modified sweep directory under ``root``.

    Hydra's default layout is ``multirun/YYYY-MM-DD/HH-MM-SS/<job>/``, so a sweep directory is two levels
    below ``root``; a directory holding a manifest one level below (a custom ``hydra.sweep.dir``) counts too.
    """
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(f"{root}: no sweep directory (run a sweep or pass --results PATH)")
    level2 = [d for d in root.glob("*/*") if d.is_dir()]
    level1 = [d for d in root.glob("*") if d.is_dir() and (d / MANIFEST_FILE).is_file()]
    sweeps = [d for d in level2 + level1 if _is_sweep(d)]
    if not sweeps:
        raise ResultsError(f"{root}: no sweep with {MANIFEST_FILE} or {RESULTS_FILE} below it")
    return max(sweeps, key=lambda d: (d.stat().st_mtime, str(d)))
