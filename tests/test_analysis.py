"""analysis: Pareto ranking, Table 1/2, completeness, collection of sweeps and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.collect import collect, latest_sweep
from analysis.completeness import missing
from analysis.figures import fig3, fig3_degradation
from analysis.ranking import pareto_ranks, rank_correlation, rank_table, setting_ranks
from analysis.tables import table2, write_table2
from rfsweep.results import MANIFEST_FILE, REAL, SETTINGS, WEIGHTS, write_results
from tests.test_results import grid, row


def dominates(i, j, clip, fid):
    return clip[i] >= clip[j] and fid[i] <= fid[j] and (clip[i] > clip[j] or fid[i] < fid[j])


# --- Pareto ranks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip, fid, ranks", [
    ([0.3, 0.3], [10, 10], [1, 1]),  # exact duplicates share a rank
    ([0.3, 0.3], [10, 12], [1, 2]),  # equal CLIP, better FID dominates
    ([0.3, 0.2], [10, 10], [1, 2]),  # equal FID, better CLIP dominates
    ([0.30, 0.25, 0.28, 0.24, 0.23, 0.23], [10, 5, 12, 6, 13, 13], [1, 1, 2, 2, 3, 3]),  # three fronts
    ([0.3], [1.0], [1]),
    ([], [], []),
])
def test_pareto_ranks_by_hand(clip, fid, ranks):
    assert pareto_ranks(np.column_stack([clip, fid]).reshape(-1, 2), ["max", "min"]).tolist() == ranks


def test_pareto_ranks_properties():
    rng = np.random.default_rng(1)
    clip, fid = rng.integers(0, 6, 60) / 10, rng.integers(0, 6, 60).astype(float)  # many ties
    r = pareto_ranks(np.column_stack([clip, fid]), ["max", "min"])
    for j in range(60):
        assert not any(dominates(i, j, clip, fid) for i in range(60) if r[i] >= r[j])
        if r[j] > 1:
            assert any(dominates(i, j, clip, fid) for i in range(60) if r[i] == r[j] - 1)


def test_pareto_ranks_rejects_nan():
    with pytest.raises(ValueError, match="finite"):
        pareto_ranks([[0.2, 1], [np.nan, 2]], ["max", "min"])


def test_pareto_ranks_over_three_objectives_with_directions():
    # a third objective (lower is better) lets c escape a's domination; flipping a direction reverses order
    x = [[0.3, 10, 5], [0.2, 20, 1], [0.25, 15, 9]]
    assert pareto_ranks(x, ["max", "min", "min"]).tolist() == [1, 1, 2]
    assert pareto_ranks([[1.0], [2.0], [3.0]], ["min"]).tolist() == [1, 2, 3]
    assert pareto_ranks([[1.0], [2.0], [3.0]], ["max"]).tolist() == [3, 2, 1]
    with pytest.raises(ValueError, match="max or min"):
        pareto_ranks([[1.0]], ["up"])


# --- Table 1 --------------------------------------------------------------------------------------------------
def hand_grid():
    pts = {  # (steps, cfg): {variant: (clip, fid)}
        (50, 5.0): {"a": (0.30, 10), "b": (0.25, 5), "c": (0.20, 20)},  # ranks a1 b1 c2
        (5, 5.0): {"a": (0.20, 30), "b": (0.30, 10), "c": (0.25, 20)},  # ranks b1 c2 a3
        (25, 5.0): {"a": (0.30, 10), "b": (0.20, 20), "c": (0.20, 20)},  # ranks a1 b2 c2
    }
    rows = [row(v, "rf", "imagenet", "ema", s, c, clip=cl, fid=f) for (s, c), d in pts.items()
            for v, (cl, f) in d.items()]
    rows.append(row("real images", REAL, "imagenet", REAL, 0, 0.0, clip=0.9, fid=0.1))  # never ranked
    return pd.DataFrame(rows)


def test_rank_table_by_hand():
    t = rank_table(hand_grid())
    assert t.columns.tolist() == ["variant", "all", "5 steps", "50 steps"]
    assert t["variant"].tolist() == ["b", "a", "c"]
    exp = {"a": (5 / 3, 3, 1), "b": (4 / 3, 1, 1), "c": (2, 2, 2)}
    for r in t.itertuples(index=False):
        assert r[1:] == pytest.approx(exp[r.variant])


def test_rank_table_two_settings_and_ties_by_name():
    t = rank_table(hand_grid().query("steps != 25"))
    assert t["variant"].tolist() == ["b", "a", "c"]  # a and c tie at 2.0: by name
    assert t["all"].tolist() == [1.0, 2.0, 2.0]


def test_rank_table_on_study_grid_counts_24_settings():
    df = grid()
    r = setting_ranks(df)
    assert (r.groupby("variant").size() == 24).all()
    assert (r[r["steps"] == 5].groupby("variant").size() == 4).all()
    assert (r[r["steps"] == 50].groupby("variant").size() == 12).all()
    t = rank_table(df).set_index("variant")
    assert "real images" not in t.index and len(t) == 9
    pd.testing.assert_series_equal(t["all"], r.groupby("variant")["rank"].mean().reindex(t.index),
                                   check_names=False)


def test_seeds_are_averaged_before_ranking():
    df = hand_grid().query("steps == 50")
    other = df[df["variant"] == "c"].assign(seed=1, clip_score=0.30, fid=20.0)  # mean c: (0.25, 20)
    t = rank_table(pd.concat([df, other]))
    assert dict(zip(t["variant"], t["all"])) == {"a": 1.0, "b": 1.0, "c": 2.0}  # c ties b on CLIP, worse FID


def test_rank_correlation():
    t = rank_table(grid())
    assert rank_correlation(t, t) == pytest.approx(1.0)
    rev = t.assign(**{"all": -t["all"]})
    assert rank_correlation(t, rev) == pytest.approx(-1.0)


# --- completeness and collection ------------------------------------------------------------------------------
def test_missing_without_manifest():
    df = grid()
    assert missing(df) == []
    cut = df[~((df["variant"] == "eps/cos") & (df["dataset"] == "imagenet"))]
    cut = cut[~((cut["variant"] == "rf") & (cut["dataset"] == "cc12m") & (cut["weights"] == "raw")
                & (cut["steps"] == 5))]
    assert missing(cut) == ["variant=eps/cos dataset=imagenet",
                            "variant=rf dataset=cc12m weights=raw steps=5 cfg=5.0"]
    assert missing(cut, weights=["ema"]) == ["variant=eps/cos dataset=imagenet"]


def manifest_for(df, extra=()):
    jobs = [{"variant": v, "dataset": d, "backbone": "dit-s", "seed": 0}
            for v, d in df[df["weights"] != REAL][["variant", "dataset"]].drop_duplicates().itertuples(index=False)]
    return {"jobs": jobs + list(extra), "settings": [list(s) for s in SETTINGS], "weights": list(WEIGHTS)}


def test_missing_with_manifest_names_unrun_job():
    df = grid()
    m = manifest_for(df, [{"variant": "rf/cosmap", "dataset": "cc12m", "backbone": "dit-s", "seed": 0}])
    assert missing(df, m) == ["variant=rf/cosmap dataset=cc12m"]
    m["settings"].append([100, 7.5])
    assert len(missing(df, m)) == 1 + 9 * 2 * 2


def write_sweep(root, df, manifest=True, drop=None):
    """Hydra layout: one job directory per (variant, dataset), the reference rows in their own."""
    root.mkdir(parents=True)
    runs = df[df["weights"] != REAL].groupby(["variant", "dataset"], sort=False)
    for i, ((v, d), rows) in enumerate(runs):
        if (v, d) != drop:
            write_results(root / str(i) / "eval" / "results.csv", rows)
    write_results(root / "real" / "results.csv", df[df["weights"] == REAL])
    if manifest:
        (root / MANIFEST_FILE).write_text(json.dumps(manifest_for(df)))
    return root


def test_two_runs_of_one_variant_and_seed_are_refused_not_averaged(tmp_path):
    """A sweep over trainer.shift gives each shift its own folder but the same variant, data set, backbone and seed:
    the tables would average them as seeds. collect refuses in one line naming both folders and the key they differ
    in; the sweep's own runs, one per key, pass."""
    from rfsweep.results import ResultsError

    rows = [row("rf", steps=s) for s in (25, 50)]
    for i, shift in enumerate((None, 3.0)):
        folder = tmp_path / "sweep" / f"rf-shift{shift}"
        write_results(folder / "results.csv", pd.DataFrame(rows))
        (folder / "config.json").write_text(json.dumps({"trainer": {"shift": shift, "lr": 1e-3}, "run_dir": str(i)}))
    with pytest.raises(ResultsError, match=r"rf-shift3.0 and .*rf-shiftNone both hold rf on imagenet with backbone "
                                           r"dit-s, seed 0, differing in trainer.shift: 3.0 vs None: the tables"):
        collect(tmp_path / "sweep")
    (tmp_path / "sweep" / "rf-shift3.0" / "results.csv").unlink()
    assert len(collect(tmp_path / "sweep")[0]) == 2
    for name in ("x", "y"):  # keys without a value (an unnamed backbone) match too: refused, not a crash
        write_results(tmp_path / "nan" / name / "results.csv", pd.DataFrame([row("rf", backbone=None)]))
    with pytest.raises(ResultsError, match="both hold rf on imagenet"):
        collect(tmp_path / "nan")


def test_collect_sweep_and_csv(tmp_path):
    df = grid()
    sweep = write_sweep(tmp_path / "sweep", df)
    got, m = collect(sweep)
    assert len(got) == len(df) and len(m["jobs"]) == 18 and m["settings"][0] == (50, 1.0)
    write_results(tmp_path / "all.csv", df)
    got, m = collect(tmp_path / "all.csv")
    assert len(got) == len(df) and m is None


def test_latest_sweep(tmp_path):
    old = write_sweep(tmp_path / "multirun" / "2026-11-25" / "10-00-00", grid())
    new = write_sweep(tmp_path / "multirun" / "2026-11-26" / "01-00-00", grid(), manifest=False)
    (tmp_path / "multirun" / "2026-11-26" / "02-00-00").mkdir()  # started, nothing written yet
    os.utime(old, (1e9, 1e9))
    os.utime(new, (2e9, 2e9))
    assert latest_sweep(tmp_path / "multirun") == new
    os.utime(old, (3e9, 3e9))
    assert latest_sweep(tmp_path / "multirun") == old


# --- Table 2 and Fig. 3 ---------------------------------------------------------------------------------------
def test_table2_places(tmp_path):
    pts = {"a": (0.25, 50), "b": (0.26, 40), "c": (0.24, 45), "d": (0.23, 60)}
    rows = [row(v, "rf", "imagenet", "ema", 25, 5.0, clip=c, fid=f) for v, (c, f) in pts.items()]
    rows += [row("a", "rf", "imagenet", "ema", 50, 5.0, clip=0.99, fid=1.0),  # other setting: ignored
             row("a", "rf", "imagenet", "raw", 25, 5.0, clip=0.99, fid=1.0),  # other weights: ignored
             row("real images", REAL, "imagenet", REAL, 0, 0.0, clip=0.30, fid=3.0)]
    t = table2(pd.DataFrame(rows), order=["d", "c", "b", "a"])
    assert t["variant"].tolist() == ["d", "c", "b", "a", "real images"]
    assert t.columns.tolist() == ["variant", "imagenet CLIP", "imagenet CLIP place", "imagenet FID",
                                  "imagenet FID place"]
    places = lambda col: dict(zip(t["variant"], t[col].astype(object).where(t[col].notna(), None)))  # noqa: E731
    assert places("imagenet CLIP place") == {"d": None, "c": 3, "b": 1, "a": 2, "real images": None}
    assert places("imagenet FID place") == {"d": None, "c": 2, "b": 1, "a": 3, "real images": None}
    write_table2(t, tmp_path)
    md = (tmp_path / "table2.md").read_text()
    assert "| b | **0.260** | **40.00** |" in md and "| a | <u>0.250</u> | *50.00* |" in md
    assert "| real images | 0.300 | 3.00 |" in md
    assert r"c & \textit{0.240} & \underline{45.00} \\" in (tmp_path / "table2.tex").read_text()
    assert pd.read_csv(tmp_path / "table2.csv")["imagenet FID place"].tolist()[1:4] == [2, 1, 3]


def test_table2_never_averages_a_metric_over_only_the_seeds_that_have_it():
    """Seeds whose results predate a metric (NaN there) leave that variant's cell empty; a metric every seed lacks
    is not shown; the metrics every seed has are averaged as before."""
    rows = [row("a", kid=0.5, seed=0), row("a", kid=float("nan"), seed=1), row("b", kid=0.1, seed=0),
            row("b", kid=0.3, seed=1), row("c", kid=float("nan"), fid_inf=float("nan"), seed=0)]
    t = table2(pd.DataFrame(rows), steps=50).set_index("variant")
    assert np.isnan(t.loc["a", "imagenet KID"]) and t.loc["b", "imagenet KID"] == pytest.approx(0.2)
    assert "imagenet FID_inf" not in t and t.loc["a", "imagenet FID"] == 50.0


def test_table2_and_fig3_keep_backbones_apart(tmp_path):
    """A sweep over backbones: Table 2 and Fig. 3 get one panel per data set and backbone (places ranked within it),
    never one backbone's network averaged with another's; the real images' row is the data set's in every panel."""
    rows = []
    for bb, pts in [("dit", {"a": (0.30, 40, 90), "b": (0.20, 60, 70)}), ("mmdit", {"a": (0.20, 60, 61),
                                                                                   "b": (0.30, 40, 41)})]:
        for v, (c, f25, f5) in pts.items():
            rows += [row(v, "rf", "imagenet", "ema", 25, 5.0, clip=c, fid=f25, backbone=bb),
                     row(v, "rf", "imagenet", "ema", 5, 5.0, clip=c, fid=f5, backbone=bb)]
        rows.append(row("real images", REAL, "imagenet", REAL, 0, 0.0, clip=0.31, fid=3.0, backbone=bb))
    df = pd.DataFrame(rows)
    t = table2(df, order=["a", "b"]).set_index("variant")
    assert t.columns.tolist() == [f"imagenet {bb} {m}{p}" for bb in ("dit", "mmdit") for m in ("CLIP", "FID")
                                  for p in ("", " place")]
    assert t.loc["a", "imagenet dit FID"] == 40 and t.loc["a", "imagenet mmdit FID"] == 60  # not their mean, 50
    assert t.loc["a", "imagenet dit FID place"] == 1 and t.loc["b", "imagenet mmdit FID place"] == 1
    assert t.loc["real images", "imagenet dit FID"] == t.loc["real images", "imagenet mmdit FID"] == 3.0
    d = fig3_degradation(df).set_index(["backbone", "metric", "family"])
    assert d.loc[("dit", "fid", "rf"), "worse_by"] == 30 and d.loc[("mmdit", "fid", "rf"), "worse_by"] == 1
    assert fig3(df, tmp_path / "f.png").stat().st_size > 10_000
    one = table2(df[df["backbone"] == "dit"])  # one backbone: the paper's layout, panels named by data set alone
    assert one.columns.tolist()[1:3] == ["imagenet CLIP", "imagenet CLIP place"]
    unnamed = df[df["backbone"] == "dit"].assign(backbone=None)  # rows naming no backbone: one panel, not dropped
    assert table2(unnamed).set_index("variant").loc["a", "imagenet FID"] == 40
    assert fig3_degradation(unnamed)["panel"].unique().tolist() == ["imagenet"]


def test_fig3_needs_cfg5_rows(tmp_path):
    df = grid()
    assert fig3(df[df["cfg"] != 5.0], tmp_path / "f.png") is None
    assert fig3(df, tmp_path / "f.png").stat().st_size > 10_000


def test_fig3_degradation_is_each_family_median_from_most_to_fewest_steps():
    rows = []
    for fam, variants, fid50, fid5 in [("rf", ("rf", "rf/cosmap", "rf/mode(1.29)"), (40, 50, 60), (45, 90, 61)),
                                       ("eps", ("eps/linear",), (30,), (80,))]:
        for v, a, b in zip(variants, fid50, fid5):
            rows += [row(v, fam, steps=50, fid=a, clip=0.30), row(v, fam, steps=5, fid=b, clip=0.25),
                     row(v, fam, steps=5, cfg=1.0, fid=999.0), row(v, fam, steps=5, weights="raw", fid=999.0)]
    d = fig3_degradation(pd.DataFrame(rows)).set_index(["metric", "family"])
    assert d.loc[("fid", "rf"), "at_most_steps"] == 50 and d.loc[("fid", "rf"), "at_fewest_steps"] == 61
    assert d.loc[("fid", "rf"), "worse_by"] == 11 and d.loc[("fid", "eps"), "worse_by"] == 50  # lower FID is better
    assert d.loc[("clip_score", "rf"), "worse_by"] == pytest.approx(0.05)  # higher CLIP is better
    assert d.loc[("fid", "rf"), "least"] and not d.loc[("fid", "eps"), "least"]
    assert d.loc[("fid", "rf"), "steps"] == "50->5"
    # seeds are averaged per variant first, then the family's median taken over its variants, as Fig. 3 draws it
    seeds = [row("v/linear", "v", steps=50, fid=0.0), row("v/linear", "v", steps=5, fid=10.0),
             row("v/linear", "v", steps=50, fid=0.0, seed=1), row("v/linear", "v", steps=5, fid=30.0, seed=1),
             row("v/cos", "v", steps=50, fid=0.0), row("v/cos", "v", steps=5, fid=100.0)]
    v = fig3_degradation(pd.DataFrame(seeds)).set_index(["metric", "family"])
    assert v.loc[("fid", "v"), "at_fewest_steps"] == 60 and v.loc[("fid", "v"), "worse_by"] == 60


# --- CLI ------------------------------------------------------------------------------------------------------
def test_cli_complete_sweep(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep", grid())
    assert main(["rank-table", "--results", str(sweep)]) == 0
    out = sweep / "analysis"
    assert pd.read_csv(out / "table1.csv").columns.tolist() == ["variant", "all", "5 steps", "50 steps"]
    for f in ("table1.md", "table1.tex", "table2.csv", "table2.md", "table2.tex", "fig3.png", "fig3.csv"):
        assert (out / f).stat().st_size > 0, f
    assert not (out / "missing.txt").exists()
    assert "| variant | all | 5 steps | 50 steps |" in capsys.readouterr().out
    assert list(pd.read_csv(out / "table2.csv").columns[1:5]) == [
        "imagenet CLIP", "imagenet CLIP place", "imagenet FID", "imagenet FID place"]


def test_cli_refuses_incomplete_then_allows(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep", grid(), drop=("v/cos", "cc12m"))
    assert main(["rank-table", "--results", str(sweep)]) == 1
    err = capsys.readouterr().err
    assert "missing: variant=v/cos dataset=cc12m" in err and "--allow-incomplete" in err.splitlines()[-1]
    assert not (sweep / "analysis").exists()
    out = tmp_path / "out"
    assert main(["rank-table", "--results", str(sweep), "--out", str(out), "--allow-incomplete"]) == 0
    assert (out / "missing.txt").read_text() == "variant=v/cos dataset=cc12m\n"
    for f in ("table1.md", "table2.md"):
        assert (out / f).read_text().startswith("<!-- INCOMPLETE GRID"), f
        assert "missing: variant=v/cos dataset=cc12m" in (out / f).read_text()
    for f in ("table1.tex", "table2.tex"):
        assert (out / f).read_text().startswith("% INCOMPLETE GRID"), f
    assert (out / "fig3.png").exists()


def test_cli_csv_default_out_and_latest_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_results(tmp_path / "rows.csv", grid())
    assert main(["rank-table", "--results", "rows.csv", "--weights", "ema"]) == 0
    assert (tmp_path / "analysis_out" / "table1.csv").exists()
    sweep = write_sweep(tmp_path / "multirun" / "2026-11-26" / "05-00-00", grid())
    assert main(["rank-table"]) == 0
    assert (sweep / "analysis" / "table1.md").exists()


@pytest.mark.parametrize("bad", ["missing", "corrupt"])
def test_cli_errors_are_one_line(tmp_path, capsys, bad):
    path = tmp_path / "results.csv"
    if bad == "corrupt":
        path.write_bytes(b"variant,family,data")
    assert main(["rank-table", "--results", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and str(path) in err


def test_cli_correlate_as_module(tmp_path):
    write_results(tmp_path / "a.csv", grid(seed=0))
    write_results(tmp_path / "b.csv", grid(seed=0))
    p = subprocess.run([sys.executable, "-m", "analysis", "correlate", str(tmp_path / "a.csv"),
                        str(tmp_path / "b.csv")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "spearman rho = 1.000 over 9 common variants (column 'all')"


def test_cli_no_sweep_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["rank-table"]) == 2
    assert "multirun" in capsys.readouterr().err


def test_correlate_with_the_papers_published_rows(tmp_path, capsys):
    import pandas as pd

    from analysis.__main__ import PAPER_TABLE1, main

    paper = pd.read_csv(PAPER_TABLE1)
    assert len(paper) == 16 and list(paper.columns) == ["variant", "all", "5 steps", "50 steps"]
    order = list(paper.sort_values("all")["variant"])
    fam = {"rf": "rf", "edm": "edm", "eps": "eps", "v/": "v"}
    for name, ranked in (("same", order), ("reversed", order[::-1])):
        rows = [row(v, next(f for k, f in fam.items() if v.startswith(k)), "imagenet", "ema", s, 5.0,
                    clip=0.3 - 0.01 * i, fid=1.0 + i) for s in (5, 50) for i, v in enumerate(ranked)]
        write_results(tmp_path / f"{name}.csv", rows)
        assert main(["correlate", str(tmp_path / f"{name}.csv"), "--paper"]) == 0
        out = capsys.readouterr().out
        want = "1.000" if name == "same" else "-1.000"
        assert f"spearman rho = {want} over 16 common variants" in out, out


def _paper_ordered_rows(seed=0, clip_order=1):
    """The paper's 16 variants on two data sets: FID in the paper's order, CLIP in it (1) or reversed (-1)."""
    from analysis.__main__ import PAPER_TABLE1

    order = list(pd.read_csv(PAPER_TABLE1).sort_values("all")["variant"])
    n = len(order)
    return [row(v, v.split("/")[0].split("(")[0], ds, w, s, 5.0, seed=seed, fid=1.0 + i,
                clip=0.5 - (i if clip_order == 1 else n - 1 - i) / 64)  # exact in binary: seeds' means tie
            for ds in ("digits", "shapes") for w in WEIGHTS for s in (5, 50) for i, v in enumerate(order)]


def test_metric_agreement_tells_the_metrics_apart():
    from analysis.__main__ import PAPER_TABLE1
    from analysis.ranking import metric_agreement

    df = pd.DataFrame(_paper_ordered_rows(clip_order=-1))
    agree = metric_agreement(df, pd.read_csv(PAPER_TABLE1), "all").set_index(["dataset", "metric"])["rho"]
    assert agree[("digits", "fid")] == pytest.approx(1.0) and agree[("shapes", "fid")] == pytest.approx(1.0)
    assert agree[("digits", "clip_score")] == pytest.approx(-1.0)
    five = metric_agreement(df, pd.read_csv(PAPER_TABLE1), "5 steps")
    assert (five[five["metric"] != "rank"]["settings"] == 2).all()  # 5 steps only: 2 weights x 1 setting
    with pytest.raises(ValueError, match="allowed"):
        metric_agreement(df, pd.read_csv(PAPER_TABLE1), "7 steps")


def test_correlate_pools_seeds_and_refuses_a_repeated_sweep(tmp_path, capsys):
    write_results(tmp_path / "s0.csv", _paper_ordered_rows(seed=0))
    write_results(tmp_path / "s1.csv", _paper_ordered_rows(seed=1, clip_order=-1))
    assert main(["correlate", str(tmp_path / "s0.csv"), "--paper"]) == 0
    assert "rho = 1.000" in capsys.readouterr().out
    # pooled: seed 1's CLIP order is the paper's reversed; averaged with seed 0 the CLIP scores tie, FID decides
    assert main(["correlate", str(tmp_path / "s0.csv"), "--also", str(tmp_path / "s1.csv"), "--paper",
                 "--by-metric"]) == 0
    out = capsys.readouterr().out
    assert "rho = 1.000 over 16 common variants (column 'all', seeds 0, 1 pooled)" in out
    assert "| digits    | clip_score |" in out
    assert main(["correlate", str(tmp_path / "s0.csv"), "--also", str(tmp_path / "s0.csv"), "--paper"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "repeat" in err


def test_a_fifth_family_gets_a_colour_in_fig3_and_too_many_are_an_error(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    import analysis.figures as figures

    df = pd.DataFrame(grid())
    fifth = df[df["family"] == "rf"].assign(family="flow", variant=lambda d: "flow/" + d["variant"])
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(
        [t.get_text() for t in fig.axes[0].get_legend().get_texts()]) or plt.close(fig) or Path(path))
    fig3(pd.concat([df, fifth]), tmp_path / "f.png")
    assert "flow" in drawn[0] and len(set(figures.family_colors(("rf", "edm", "eps", "v", "flow")).values())) == 5
    with pytest.raises(ValueError, match="formulation families but 10 colours"):
        figures.family_colors(tuple(f"f{i}" for i in range(11)))
