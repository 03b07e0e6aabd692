"""The scaling study (Sec. 5.3): validation loss against training compute, one curve per model size, and a power
law L = a * C^b fitted to each run's final validation loss against its total compute.

Pure functions over saved files: each run's `model.json` (parameters, training FLOPs per sample, global batch;
written by `python -m rfsweep` before training) and its `metrics.csv` parts (validation loss by step).
Compute after step k = k * batch * FLOPs per sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.curves import run_metric  # noqa: E402
from analysis.figures import save_figure  # noqa: E402


def collect_scaling(sweep: str | Path, metric: str = "val/loss_ema") -> pd.DataFrame:
    """Rows (run, depth, params, step, compute, value) of every run under `sweep` with a model.json and `metric`."""
    rows = []
    for info_file in sorted(Path(sweep).rglob("model.json")):
        run, info = info_file.parent, json.loads(info_file.read_text())
        if not info.get("train_flops_per_sample"):
            continue  # not an MM-DiT: no compute axis
        df = run_metric(run, metric)
        if df is None:
            continue
        per_step = info["batch_size"] * info["train_flops_per_sample"]
        rows += [{"run": str(run), "depth": info["depth"], "params": info["params"], "step": int(s),
                  "compute": int(s) * per_step, "value": float(v)} for s, v in zip(df["step"], df[metric])]
    if not rows:
        raise ValueError(f"{sweep}: no MM-DiT run with model.json and {metric!r} in its metrics")
    return pd.DataFrame(rows).sort_values(["params", "step"], ignore_index=True)


def final_points(curves: pd.DataFrame) -> pd.DataFrame:
    """Each run's last point: (depth, params, compute, value)."""
    return curves.groupby("run", as_index=False).last()[["depth", "params", "compute", "value"]]


def power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of y = a * x^b, least squares in log-log."""
    if len(x) < 2:
        raise ValueError("a power law needs at least two runs")
    b, log_a = np.polyfit(np.log(x), np.log(y), 1)
    return float(np.exp(log_a)), float(b)


def scaling_figure(curves: pd.DataFrame, path: str | Path) -> tuple[Path, tuple[float, float]]:
    final = final_points(curves)
    a, b = power_law(final["compute"].to_numpy(), final["value"].to_numpy())
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (depth, params), g in curves.groupby(["depth", "params"]):
        ax.plot(g["compute"], g["value"], marker="o", ms=2, label=f"depth {depth} ({params / 1e6:.2f}M)")
    c = np.geomspace(final["compute"].min(), final["compute"].max(), 50)
    ax.plot(c, a * c**b, "k--", lw=1, label=f"fit: L = {a:.3g} C^{b:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss (EMA)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path), (a, b)
