"""Fig. 3: FID and CLIP score against sampling steps, one colour per formulation family."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # analysis never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.ranking import PANEL_KEYS, backbone_labels, panels  # noqa: E402
from rfsweep.formulations.variants import FAMILIES  # noqa: E402
from rfsweep.metrics import METRICS, ranked_names  # noqa: E402
from rfsweep.results import REAL  # noqa: E402

PALETTE = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan", "tab:gray")


def family_colors(families=FAMILIES) -> dict[str, str]:
    """One colour per family, keyed by family: a family the palette cannot colour is an error, never dropped."""
    if len(families) > len(PALETTE):
        raise ValueError(f"{len(families)} formulation families but {len(PALETTE)} colours in analysis.figures.PALETTE "
                         f"(allowed: add colours for the families {', '.join(families[len(PALETTE):])})")
    return {fam: PALETTE[i] for i, fam in enumerate(families)}


FAMILY_COLORS = family_colors()


def _points(df: pd.DataFrame, cfg: float, weights: str) -> pd.DataFrame:
    """What Fig. 3 draws: the rows at `cfg` with `weights`, each variant's mean (over seeds) per data set, backbone and
    steps, data sets in the order the rows give them."""
    sel = df[(df["weights"] == weights) & ((df["cfg"] - cfg).abs() < 1e-9)]
    sel = sel.assign(backbone=backbone_labels(sel["backbone"]))
    names = [m for m in METRICS if m in sel]
    pts = sel.groupby([*PANEL_KEYS, "family", "variant", "steps"], as_index=False)[names]
    order = {d: i for i, d in enumerate(dict.fromkeys(sel["dataset"]))}
    return pts.mean().sort_values("dataset", key=lambda c: c.map(order), kind="stable")


def _drawn() -> list:
    """Fig. 3's metrics: those the ranking uses (`rfsweep.metrics.ranked_names`; the paper's CLIP score and FID)."""
    return [METRICS[n] for n in ranked_names()]


def fig3(df: pd.DataFrame, path: str | Path, cfg: float = 5.0, weights: str = "ema",
         bands: pd.DataFrame | None = None) -> Path | None:
    """Save Fig. 3 to ``path``: per panel (a data set, or data set and backbone: `analysis.ranking.panels`) one plot
    per metric the ranking uses (`_drawn`) against the sampling steps present at ``cfg``; each variant a thin line in
    its family's colour, each family's median bold (with its 95% band from `bands`, `Confidence.family_bands`), and the
    reference (real images) as a dashed line when the evaluation wrote one.
    Returns None (and writes nothing) when no row matches."""
    pts = _points(df, cfg, weights)
    if pts.empty:
        return None
    metrics = sorted(_drawn(), key=lambda m: m.direction)  # FID first, as the paper draws it
    colors = family_colors(tuple(dict.fromkeys([*FAMILIES, *pts["family"]])))  # every family drawn, or an error
    groups = panels(pts.assign(weights=weights))
    steps = sorted(pts["steps"].unique())
    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(4.5 * len(metrics), 3.2 * len(groups)),
                             squeeze=False)
    for row, (ds, bb, name) in zip(axes, groups):
        d = pts[(pts["dataset"] == ds) & (pts["backbone"] == bb)]
        for ax, (metric, label) in zip(row, [(m.name, m.label) for m in metrics]):
            for fam, color in colors.items():
                f = d[d["family"] == fam]
                for _, v in f.groupby("variant"):
                    ax.plot(v["steps"], v[metric], color=color, lw=0.6, alpha=0.35)
                if not f.empty:
                    med = f.groupby("steps")[metric].median()
                    ax.plot(med.index, med.to_numpy(), color=color, lw=2.5, marker="o", ms=3, label=fam)
                    if bands is not None and len(bands):  # the 95% band of the family's median (confidence)
                        same = backbone_labels(bands["backbone"]) == bb if "backbone" in bands else True
                        b = bands[(bands["dataset"] == ds) & same & (bands["family"] == fam)
                                  & (bands["metric"] == metric)]
                        b = b.sort_values("steps")
                        ax.fill_between(b["steps"], b["lo"], b["hi"], color=color, alpha=0.2, lw=0)
            ref = df[(df["weights"] == REAL) & (df["dataset"] == ds)][metric]
            if len(ref):  # real images: the floor under which differences mean nothing
                ax.axhline(ref.mean(), color="k", ls="--", lw=1, label="real images")
            ax.set_xscale("log")
            ax.set_xticks(steps, [str(s) for s in steps])
            ax.minorticks_off()
            ax.set_xlabel("sampling steps")
            ax.set_ylabel(label)
            ax.set_title(f"{name}: {label} (cfg {cfg:g}, {weights} weights)", fontsize=9)
    axes[0][0].legend(title="family (median bold)", fontsize=8)
    return save_figure(fig, path)


def fig3_degradation(df: pd.DataFrame, cfg: float = 5.0, weights: str = "ema") -> pd.DataFrame:
    """What Fig. 3 claims, as numbers: per data set, backbone, metric and family, the family's median (the bold line)
    at the most and at the fewest sampling steps, and how much worse it gets from the one to the other (in the
    metric's own units, positive = worse); `least` marks the family that degrades least in each panel, `panel` names
    it as the figure does."""
    pts = _points(df, cfg, weights)
    rows = []
    for m in _drawn():
        med = pts.groupby([*PANEL_KEYS, "family", "steps"])[m.name].median()
        for (ds, bb, fam), s in med.groupby(level=[*PANEL_KEYS, "family"]):
            s = s.droplevel([*PANEL_KEYS, "family"])
            few, most = s.loc[s.index.min()], s.loc[s.index.max()]
            rows.append({"dataset": ds, "backbone": bb, "metric": m.name, "family": fam,
                         "steps": f"{s.index.max()}->{s.index.min()}", "at_most_steps": most, "at_fewest_steps": few,
                         "worse_by": (most - few) if m.direction == "max" else (few - most)})
    out = pd.DataFrame(rows, columns=[*PANEL_KEYS, "metric", "family", "steps", "at_most_steps", "at_fewest_steps",
                                      "worse_by"])
    out["least"] = out.groupby([*PANEL_KEYS, "metric"])["worse_by"].transform("min") == out["worse_by"]
    names = {(d, b): name for d, b, name in panels(pts.assign(weights=weights))}  # as Fig. 3 titles its panels
    out["panel"] = [names.get((str(d), str(b)), str(d)) for d, b in zip(out["dataset"], out["backbone"])]
    return out


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as PNG (creating the folder) and free it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
