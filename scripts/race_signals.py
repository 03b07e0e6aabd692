"""How well early signals predict a grid's final places (`python scripts/race_signals.py RACED FINAL [STEP...]`).

RACED: a raced sweep (its decision log and run folders: each rung's places, every run's validation losses); FINAL:
the same grid trained to the end with the same seed (a plain sweep, or a calibration race). For each rung of RACED
and each early signal, the Spearman correlation over the variants with the final places of FINAL (its `all` column,
the bootstrap's point place) and where the final top K sat:

- the rung's place (its evaluation: CLIP score and FID on the rung's samples, non-dominated sorting);
- each formulation's own validation loss (`val/loss_ema`, ranked within a data set, ranks averaged);
- the common validation loss (`val/rf_velocity_ema`: the rectified-flow velocity error through `velocity()`).

Validation losses are read at each rung's step from every run's metrics (runs the race stopped still hold them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.collect import collect  # noqa: E402
from analysis.commands.sweep_rows import required_banks  # noqa: E402
from analysis.confidence import bootstrap  # noqa: E402
from analysis.race_log import DecisionLog  # noqa: E402
from rfsweep.runfolder import metrics_files  # noqa: E402

SIGNALS = {"own validation loss": "val/loss_ema", "common validation loss": "val/rf_velocity_ema"}


def final_places(sweep: Path) -> pd.Series:
    df, _ = collect(sweep)
    df = df[~df["weights"].str.startswith("phema")]
    return bootstrap(df, required_banks(df), b=200, seed=0).places("all").set_index("variant")["rank"]


def losses(sweep: Path, step: int) -> pd.DataFrame:
    """variant x signal: each signal ranked within its data set at `step`, the ranks averaged over data sets."""
    rows = []
    for config in sorted(sweep.glob("*/*/*/seed*/config.json")):
        run = config.parent
        cfg = json.loads(config.read_text())
        frames = [pd.read_csv(p) for p in metrics_files(run) if p.is_file()]
        if not frames:
            continue
        m = pd.concat(frames)
        m = m[m["step"] == step - 1] if (m["step"] == step - 1).any() else m[m["step"] == step]
        row = {"variant": cfg["formulation"]["variant"], "dataset": run.parts[-4]}
        for name, col in SIGNALS.items():
            row[name] = m[col].dropna().iloc[-1] if col in m and m[col].notna().any() else float("nan")
        rows.append(row)
    df = pd.DataFrame(rows)
    ranked = df.groupby("dataset")[list(SIGNALS)].rank()
    return ranked.assign(variant=df["variant"]).groupby("variant").mean()


def main(raced: str, final: str, top: int = 3) -> None:
    sweep = Path(raced)
    end = final_places(Path(final))
    best = end[end <= top].index
    print(f"final top {top} of {final}: {', '.join(best)}")
    for rec in (r for r in DecisionLog(sweep).records() if "rung" in r):
        rung = pd.Series({v: p[0] for v, p in rec["places"].items()})
        signals = {"rung place": rung, **losses(sweep, rec["step"]).to_dict("series")}
        for name, s in signals.items():
            s = s.dropna()
            common = s.index.intersection(end.index)
            if len(common) < 3:
                print(f"rung {rec['rung']} (step {rec['step']}): {name}: not logged")
                continue
            rho = spearmanr(s[common], end[common]).statistic
            where = s.rank(method="min")
            print(f"rung {rec['rung']} (step {rec['step']}), {len(common)} variants: {name}: Spearman with the final "
                  f"places {rho:.3f}; the final top {top} placed "
                  + ", ".join(f"{int(where[v])}" for v in best if v in where.index))


if __name__ == "__main__":
    main(*sys.argv[1:3])
