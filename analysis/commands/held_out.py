"""``held-out``: leave one training seed out, predict its single-seed Table 1 from the other seeds
(`analysis.prediction`), and count how many of its places the 95% prediction intervals hold."""

from __future__ import annotations

from pathlib import Path

from analysis.commands.sweep_rows import pooled, required_banks
from analysis.prediction import leave_one_seed_out


def held_out_cmd(args) -> int:
    df = pooled(args.sweep, args.also, args.weights)
    r = leave_one_seed_out(df, required_banks(df), args.column, b=args.bootstrap, seed=args.bootstrap_seed)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        r.to_csv(Path(args.out) / "held_out.csv", index=False)
    for held, part in r.groupby("held"):
        print(f"seed {held} held out: {int(part['inside'].sum())} of {len(part)} of its places inside the 95% "
              f"prediction intervals from the other seeds (mean width {(part['new_hi'] - part['new_lo']).mean():.1f})")
    print(f"all: {int(r['inside'].sum())} of {len(r)} ({r['inside'].mean():.3f}); column {args.column!r}, "
          f"B={args.bootstrap}")
    return 0
