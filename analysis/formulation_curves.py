"""What each formulation does, drawn from the objects that train (`rfsweep.formulations.weighting`): the density of
its training t and of log-SNR lambda, the weight its loss puts on an eps-error, and the effective weight over lambda,
with the paper's closed forms beside them; all variants in one figure by family (`python -m analysis formulations`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.figures import save_figure  # noqa: E402
from rfsweep.formulations import ALL_VARIANTS, build_formulation  # noqa: E402
from rfsweep.formulations.variants import FAMILIES  # noqa: E402
from rfsweep.formulations.weighting import deviation, measure  # noqa: E402

QUANTITIES = {  # quantity -> (x column, measured, paper, y label)
    "density_t": ("t", "density_t", "paper_density_t", "density of native training t"),
    "density_lambda": ("lambda", "density_lambda", "paper_density_lambda", "density of log-SNR lambda"),
    "loss_weight": ("lambda", "loss_weight", None, "loss weight on an eps-error"),
    "effective": ("lambda", "effective", "paper_effective", "effective weight w(lambda)"),
}


def formulation(name: str, shift: float = 1.0):
    """The variant as training builds it; the shift applies to the rf family only (the others keep 1)."""
    plain = build_formulation(name)
    return build_formulation(name, shift=shift) if plain.family == "rf" else plain


def curves(names=ALL_VARIANTS, shift: float = 1.0, n: int = 200_000, bins: int = 40, seed: int = 0) -> pd.DataFrame:
    """Long table: variant, family, shift, quantity, x, measured, paper (NaN where the paper gives no closed form),
    and each variant's `deviation` (the largest gap of the measured effective weight from the paper's)."""
    rows = []
    for name in names:
        f = formulation(name, shift)
        c = measure(f, n=n, bins=bins, seed=seed)
        dev = deviation(c)
        for quantity, (x, got, want, _) in QUANTITIES.items():
            paper = c[want] if want and c[want] is not None else np.full(len(c[x]), np.nan)
            rows.append(pd.DataFrame({"variant": f.name, "family": f.family, "shift": f.shift, "quantity": quantity,
                                      "x": c[x], "measured": c[got], "paper": paper,
                                      "deviation": np.nan if dev is None else dev}))
    return pd.concat(rows, ignore_index=True)


def figure(df: pd.DataFrame, path: str | Path) -> Path:
    """Rows: the four quantities; columns: the families present; a line per variant (solid: measured from the code
    that trains; dashed black: the paper's closed form)."""
    families = [f for f in FAMILIES if f in set(df["family"])]
    fig, axes = plt.subplots(len(QUANTITIES), len(families), figsize=(4.2 * len(families), 3.0 * len(QUANTITIES)),
                             squeeze=False)
    for j, family in enumerate(families):
        sub = df[df["family"] == family]
        variants = list(dict.fromkeys(sub["variant"]))
        colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(variants), 1)))
        for i, (quantity, (xname, _, _, label)) in enumerate(QUANTITIES.items()):
            ax = axes[i, j]
            for colour, v in zip(colours, variants):
                q = sub[(sub["variant"] == v) & (sub["quantity"] == quantity)]
                ax.plot(q["x"], q["measured"], color=colour, lw=1.0, label=v)
                if q["paper"].notna().any():
                    ax.plot(q["x"], q["paper"], color="black", lw=0.6, ls="--")
            if quantity == "loss_weight":
                ax.set_yscale("log")
            ax.set_xlabel(xname)
            if j == 0:
                ax.set_ylabel(label)
            if i == 0:
                shift = sorted(set(sub["shift"]))
                ax.set_title(f"{family} ({len(variants)} variants" + (f", shift {shift[-1]:g})" if shift[-1] != 1
                                                                       else ")"))
        if len(variants) <= 12:
            axes[-1, j].legend(fontsize=5, loc="upper left")
    fig.suptitle("Each formulation as it trains (solid: measured from sample_t and loss; dashed: the paper)")
    fig.tight_layout()
    return save_figure(fig, path)
