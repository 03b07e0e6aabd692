"""``fig4`` (validation-loss curves per backbone), ``scaling`` (validation loss against training FLOPs, with its
power-law fit) and ``formulations`` (each formulation's time density and weights over log-SNR, beside the paper's)."""

from __future__ import annotations

import sys
from pathlib import Path

from analysis.commands.options import output_folder
from analysis.curves import collect_curves, fig4
from analysis.formulation_curves import curves, figure
from analysis.scaling import collect_scaling, final_points, scaling_figure
from rfsweep.formulations import ALL_VARIANTS, build_formulation


def fig4_cmd(args) -> int:
    found = collect_curves(args.sweep)
    out = output_folder(args.out, Path(args.sweep))
    path = fig4(found, out / "fig4.png")
    last = found.sort_values("step").groupby("backbone").tail(1).sort_values("value")
    found.to_csv(out / "fig4.csv", index=False)
    print(last[["backbone", "step", "value"]].to_markdown(index=False))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def scaling_cmd(args) -> int:
    found = collect_scaling(args.sweep)
    out = output_folder(args.out, Path(args.sweep))
    path, (a, b) = scaling_figure(found, out / "scaling.png")
    found.to_csv(out / "scaling.csv", index=False)
    print(final_points(found).to_markdown(index=False, floatfmt=".4g"))
    print(f"power law of final validation loss: L = {a:.4g} * C^{b:.4f}")
    print(f"wrote {path}", file=sys.stderr)
    return 0


def formulations_cmd(args) -> int:
    names = [build_formulation(v).name for v in args.variants] or list(ALL_VARIANTS)  # a bad name: one line
    out = Path(args.out)
    df = curves(names, shift=args.shift, n=args.n)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "formulations.csv", index=False, float_format="%.6g")
    path = figure(df, out / "formulations.png")
    dev = df.drop_duplicates("variant").set_index("variant")["deviation"]
    closed = dev.dropna()
    worst = f"{closed.max():.1%} ({closed.idxmax()})" if len(closed) else "-"
    print(f"{len(names)} variants -> {path}, {out / 'formulations.csv'}; measured effective weight against the "
          f"paper's closed form: largest gap {worst} over bins holding 1% of the draws or more; no closed form: "
          f"{', '.join(dev[dev.isna()].index) or 'none'}")
    return 0
