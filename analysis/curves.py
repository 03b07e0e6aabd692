"""Fig. 4: validation loss against training steps, one line per backbone (pure function over saved
`metrics.csv` files; the backbone and variant come from each run's `config.json`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.figures import save_figure  # noqa: E402
from rfsweep.runfolder import metrics_files, read_config  # noqa: E402


def run_metric(run: Path, metric: str) -> pd.DataFrame | None:
    """(step, metric) of one run folder, None if it never logged `metric`. A resumed run keeps its earlier rows in
    metrics-part<k>.csv (`rfsweep.runfolder.keep_previous_metrics`); later rows win for a repeated step."""
    files = metrics_files(run)
    parts = [p for p in (pd.read_csv(f) for f in files if f.is_file()) if metric in p.columns]
    if not parts:
        return None
    return pd.concat([p[["step", metric]].dropna() for p in parts]).drop_duplicates("step", keep="last")


def collect_curves(sweep: str | Path, metric: str = "val/loss_ema") -> pd.DataFrame:
    """Rows (run, backbone, variant, dataset, step, value) for every run under `sweep` that logged `metric`."""
    rows = []
    for metrics in sorted(Path(sweep).rglob("metrics.csv")):
        run = metrics.parent
        cfg = read_config(run)
        if cfg is None:
            continue
        df = run_metric(run, metric)
        if df is None:
            continue
        for step, value in zip(df["step"], df[metric]):
            rows.append({"run": str(run), "backbone": cfg["backbone"].get("label", cfg["backbone"]["name"]),
                         "variant": str(cfg["formulation"].get("variant", "")), "dataset": cfg["data"]["label"],
                         "step": int(step), "value": float(value)})
    if not rows:
        raise ValueError(f"{sweep}: no run with {metric!r} in its metrics.csv")
    return pd.DataFrame(rows)


def fig4(curves: pd.DataFrame, path: str | Path, metric: str = "validation loss (EMA)") -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for backbone, g in curves.groupby("backbone"):
        g = g.groupby("step", as_index=False)["value"].mean()
        ax.plot(g["step"], g["value"], marker="o", ms=3, label=backbone)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.set_yscale("log")  # losses fall by orders of magnitude; differences show late
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
