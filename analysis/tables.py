"""Tables 1 and 2 of the paper as CSV, Markdown and LaTeX.

Table 2's CSV has, per panel (a data set; data set and backbone in a sweep of several backbones) and registered
metric (`rfsweep.metrics`), a column ``<panel> <heading>`` and
next to it ``<col> place`` holding 1, 2 or 3 for the best, second and third variant of that column (in the
metric's direction; ties share a place, competition style) and empty otherwise. Markdown marks them **bold**,
<u>underlined</u>, *italic*;
LaTeX \\textbf, \\underline, \\textit. The reference row ("real images") is never placed.
When the grid was incomplete, Markdown and LaTeX files open with a comment saying what was missing and
``missing.txt`` lists every missing run and setting.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.ranking import TABLE1_COLUMNS, backbone_labels, panels
from rfsweep.metrics import METRICS
from rfsweep.results import REAL, REAL_VARIANT

MISSING_FILE = "missing.txt"
_NOTE_MAX = 20  # missing items quoted in a table's header comment; missing.txt has all


def _note(missing: list[str] | None) -> list[str]:
    if not missing:
        return []
    lines = [f"INCOMPLETE GRID, ranked anyway (--allow-incomplete): {len(missing)} runs/settings missing"]
    lines += [f"  missing: {m}" for m in missing[:_NOTE_MAX]]
    if len(missing) > _NOTE_MAX:
        lines.append(f"  ... and {len(missing) - _NOTE_MAX} more, see {MISSING_FILE}")
    return lines


def _markdown(header: list[str], rows: list[list[str]], missing) -> str:
    out = [f"<!-- {line} -->" for line in _note(missing)]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


_TEX = str.maketrans({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "{": r"\{",
                      "}": r"\}"})


def _tex_escape(s: str) -> str:
    return s.translate(_TEX)  # one pass: the braces of \textbackslash{} are not escaped again


def _latex(header: list[str], rows: list[list[str]], missing) -> str:
    out = [f"% {line}" for line in _note(missing)]
    out += [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
            " & ".join(_tex_escape(h) for h in header) + r" \\", r"\midrule"]
    out += [" & ".join(r) + r" \\" for r in rows]
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def write_missing(out_dir: str | Path, missing: list[str] | None) -> Path | None:
    """Write ``missing.txt`` (one name a line) when something is missing; remove a stale one otherwise."""
    path = Path(out_dir) / MISSING_FILE
    if not missing:
        path.unlink(missing_ok=True)
        return None
    path.write_text("".join(m + "\n" for m in missing))
    return path


CONFIDENCE_COLUMNS = ["rank", "rank_lo", "rank_hi", "sim_lo", "sim_hi", "best", "p_rank1", "p_top5"]
CONFIDENCE_HEADINGS = ["rank [95%] {simultaneous}", "P(rank 1)", "P(top 5)"]
CONFIDENCE_LEGEND = (
    "rank [a-b] {c-d} *: the place in the point table; [a-b] its marginal 95% interval (each variant's place on its "
    "own: percentile bootstrap); {c-d} the simultaneous 95% set (every variant's place at once: max-t over the "
    "pairwise differences of averaged ranks, stepdown, Mogstad et al. 2024); * in the 95% set of the variants that "
    "can be the best (tau-best, tau = 1: it holds every true best at once). The 5- and 50-step columns likewise.")

NEW_SEED_HEADING = "new seed [95%]"
NEW_SEED_LEGEND = (
    "new seed [a-b]: the 95% prediction interval of the place one new training seed of every variant would give in "
    "its own single-seed table (a replication), from the seeds' means and the pooled between-run variance.")


def confidence_columns(confidence: pd.DataFrame) -> list[str]:
    """The columns of a `Confidence.table()` that Table 1's CSV and W&B table carry: CONFIDENCE_COLUMNS, then each
    other column's ``<column> rank``, ``rank_lo``, ``rank_hi``, ``sim_lo``, ``sim_hi``, ``best``."""
    return [c for c in confidence.columns if c not in TABLE1_COLUMNS]


def _place_cell(r: dict, prefix: str = "") -> str:
    if pd.isna(r[prefix + "rank"]):
        return "-"
    mark = " *" if r[prefix + "best"] else ""
    return (f"{int(r[prefix + 'rank'])} [{int(r[prefix + 'rank_lo'])}-{int(r[prefix + 'rank_hi'])}] "
            f"{{{int(r[prefix + 'sim_lo'])}-{int(r[prefix + 'sim_hi'])}}}{mark}")


def write_table1(table: pd.DataFrame, out_dir: str | Path, missing: list[str] | None = None,
                 confidence: pd.DataFrame | None = None) -> list[Path]:
    """``table1.csv`` (``variant, all, 5 steps, 50 steps``, 2 decimals; with `confidence` (from
    `analysis.confidence.Confidence.table`) also its `confidence_columns`), ``table1.md``, ``table1.tex`` (per
    column the place with its marginal 95% interval [a-b], its simultaneous 95% set {c-d} and * for the set of who
    can be the best; P(rank 1), P(top 5); the legend under the Markdown table, atop the LaTeX one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = table[TABLE1_COLUMNS].round(2)
    header = list(TABLE1_COLUMNS)
    rows = [[r.variant] + ["-" if pd.isna(x) else f"{x:.2f}" for x in r[1:]] for r in t.itertuples(index=False)]
    legend = []
    if confidence is not None:
        cols = confidence_columns(confidence)
        c = confidence.set_index("variant").reindex(t["variant"])[cols].reset_index(drop=True)
        t = t.join(c)
        others = [k for k in TABLE1_COLUMNS[2:] if f"{k} rank" in cols]
        header += CONFIDENCE_HEADINGS + [f"{k} rank [95%] {{simultaneous}}" for k in others]
        rows = [row + [_place_cell(r), f"{r['p_rank1']:.2f}", f"{r['p_top5']:.2f}"]
                + [_place_cell(r, f"{k} ") for k in others] for row, r in zip(rows, c.to_dict("records"))]
        legend = [CONFIDENCE_LEGEND]
        if "new_lo" in cols:
            header.append(NEW_SEED_HEADING)
            rows = [row + [f"[{int(r['new_lo'])}-{int(r['new_hi'])}]"] for row, r in zip(rows, c.to_dict("records"))]
            legend.append(NEW_SEED_LEGEND)
    t.to_csv(out / "table1.csv", index=False, float_format="%.3f")
    (out / "table1.md").write_text(_markdown(header, rows, missing) + "".join(f"\n{line}\n" for line in legend))
    tex_rows = [[_tex_escape(x) for x in r] for r in rows]
    (out / "table1.tex").write_text("".join(f"% {line}\n" for line in legend) + _latex(header, tex_rows, missing))
    return [out / f"table1.{e}" for e in ("csv", "md", "tex")]


def table2(df: pd.DataFrame, steps: int = 25, cfg: float = 5.0, weights: str = "ema",
           order: list[str] | None = None) -> pd.DataFrame:
    """Table 2: every registered metric the rows hold (KID and CMMD where results or banks give them) per panel (a
    data set, or data set and backbone when the rows hold several backbones: `analysis.ranking.panels`) at one sampler
    setting, with ``<col> place`` columns.

    Several rows of one variant (seeds) are averaged; a metric some of them lack (results written before it existed)
    is left empty for that variant rather than averaged over the others. Rows follow ``order`` (e.g. Table 1's),
    else variant name; the reference row, when the evaluation wrote one, comes last (its values are the data set's).
    """
    sel = df[(df["weights"] == weights) & (df["steps"] == steps) & ((df["cfg"] - cfg).abs() < 1e-9)]
    if sel.empty:
        return pd.DataFrame({"variant": []})
    metrics = [m.name for m in METRICS.values() if m.name in sel]
    sel = sel.assign(backbone=backbone_labels(sel["backbone"]))
    groups = panels(sel)
    by = sel.groupby(["variant", "dataset", "backbone"])[metrics]
    wide = by.mean().where(by.count().eq(by.size(), axis=0))  # a mean over only the seeds that have it is no mean
    shown = [m for m in METRICS.values() if m.name in metrics and wide[m.name].notna().any()]  # older results lack some
    real = df[(df["weights"] == REAL) & df["dataset"].isin({d for d, _, _ in groups})]
    real = real.groupby("dataset")[metrics].mean()
    pos = {v: i for i, v in enumerate(order or [])}
    names = sorted(set(sel["variant"]), key=lambda v: (pos.get(v, len(pos)), v))
    names += [REAL_VARIANT] if len(real) and REAL_VARIANT not in names else []
    out = pd.DataFrame({"variant": names})
    for ds, bb, name in groups:
        cell = wide.xs((ds, bb), level=["dataset", "backbone"]).reindex(names)
        if ds in real.index:
            cell.loc[REAL_VARIANT] = real.loc[ds]
        for m in shown:
            col = f"{name} {m.heading}"
            vals = cell[m.name].to_numpy()
            out[col] = vals
            ranked = pd.Series(vals).where(out["variant"] != REAL_VARIANT).rank(method="min",
                                                                               ascending=m.direction == "min")
            out[f"{col} place"] = ranked.where(ranked <= 3).astype("Int64")
    return out


def with_confidence(table1: pd.DataFrame, conf=None) -> pd.DataFrame:
    """Table 1 with its rank intervals and sets (`analysis.confidence.Confidence.table`) beside each variant, when
    there are."""
    if conf is None:
        return table1
    c = conf.table()
    return table1.merge(c[["variant", *confidence_columns(c)]], on="variant")


def _fmt(col: str, x: float) -> str:
    digits = next((m.digits for m in METRICS.values() if col.endswith(f" {m.heading}")), 3)
    return "-" if pd.isna(x) else f"{x:.{digits}f}"


def write_table2(t2: pd.DataFrame, out_dir: str | Path, missing: list[str] | None = None) -> list[Path]:
    """``table2.csv`` (with place columns), ``table2.md`` and ``table2.tex`` (places marked)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t2.to_csv(out / "table2.csv", index=False)
    cols = [c for c in t2.columns if c != "variant" and not c.endswith(" place")]
    md_mark = {1: "**{}**", 2: "<u>{}</u>", 3: "*{}*"}
    tex_mark = {1: r"\textbf{{{}}}", 2: r"\underline{{{}}}", 3: r"\textit{{{}}}"}
    md_rows, tex_rows = [], []
    for _, r in t2.iterrows():
        cells = [(_fmt(c, r[c]), r[f"{c} place"]) for c in cols]
        md_rows.append([r["variant"]] + [s if pd.isna(p) else md_mark[int(p)].format(s) for s, p in cells])
        tex_rows.append([_tex_escape(r["variant"])] + [s if pd.isna(p) else tex_mark[int(p)].format(s)
                                                       for s, p in cells])
    (out / "table2.md").write_text(_markdown(["variant"] + cols, md_rows, missing))
    (out / "table2.tex").write_text(_latex(["variant"] + cols, tex_rows, missing))
    return [out / f"table2.{e}" for e in ("csv", "md", "tex")]
