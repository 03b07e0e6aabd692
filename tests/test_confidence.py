"""Rank confidence (`analysis.confidence`): on evidence with a known truth (tests/synthetic_evidence.py), a variant
far ahead is alone in the set of who can be the best with P(rank 1) near 1, identical variants tie, the intervals
cover the true places at least at their nominal rate without being vacuous, and the shared prompt draw pays; FID's
resampling follows the exact Frechet distance of the weighted statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.confidence import bootstrap, fid_influence, missing_banks
from analysis.ranking import rank_table
from rfsweep.evaluation.statistics import feature_stats, frechet_distance
from tests.synthetic_evidence import synthetic


def _weighted_fid(x, w, ref):
    w = w / w.sum()
    mu = w @ x
    xc = x - mu
    s = (xc * w[:, None]).T @ xc * len(x) / (len(x) - 1)
    return frechet_distance(mu, s, *ref)


def test_fid_influence_is_the_derivative_and_resamples_like_the_exact_fid():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12)) * 0.1 + 0.05
    ref = feature_stats(rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12)) * 0.1)
    infl = fid_influence(x, *ref)
    base = _weighted_fid(x, np.ones(200), ref)
    for i in (3, 77):
        w = np.full(200, (1 - 1e-4) / 200)
        w[i] += 1e-4
        assert (_weighted_fid(x, w, ref) - base) / 1e-4 == pytest.approx(infl[i], rel=0.05, abs=1e-3)
    counts = rng.multinomial(200, np.full(200, 1 / 200), size=300).astype(float)
    exact = np.array([_weighted_fid(x, c, ref) for c in counts])
    linear = base + counts @ infl / 200
    assert np.corrcoef(exact, linear)[0, 1] > 0.95 and linear.std() == pytest.approx(exact.std(), rel=0.1)


def test_a_variant_far_ahead_is_alone_in_the_set_of_who_can_be_best():
    quality = {f"v{i:02d}": i / 20 for i in range(10)} | {"best": 1.0}
    df, banks = synthetic(quality, seeds=2, tau=0.02)
    t = bootstrap(df, banks, b=500).table().set_index("variant")
    assert t.loc["best", "p_rank1"] > 0.99 and t.loc["best", ["rank_lo", "rank_hi"]].tolist() == [1, 1]
    assert t.loc["best", ["sim_lo", "sim_hi"]].tolist() == [1, 1]
    assert t["best"].sum() == 1 and t.loc["best", "best"]
    assert (t["p_rank1"].drop("best") < 0.01).all()
    assert (t["sim_lo"] <= t["rank"]).all() and (t["rank"] <= t["sim_hi"]).all()  # a set holds its point place


def test_identical_variants_tie():
    quality = {f"v{i:02d}": i / 20 for i in range(6)}
    df, banks = synthetic(quality, n=100)
    twin = df[df["variant"] == "v05"].assign(variant="twin", run_dir=lambda d: d["run_dir"] + "-twin")
    banks.update({r + "-twin": banks[r] for r in df.loc[df["variant"] == "v05", "run_dir"]})
    c = bootstrap(pd.concat([df, twin], ignore_index=True), banks, b=300)
    pos = c.positions()
    a, b = c.variants.index("v05"), c.variants.index("twin")
    assert np.array_equal(pos[:, a], pos[:, b])
    t = c.table().set_index("variant")
    assert t.loc["v05", "best"] and t.loc["twin", "best"] and t.loc["v05", "p_rank1"] == t.loc["twin", "p_rank1"]
    assert t.loc["v05", ["sim_lo", "sim_hi"]].tolist() == t.loc["twin", ["sim_lo", "sim_hi"]].tolist()
    assert c.pairwise().loc["v05", "twin"] == 0.5


def test_the_point_table_is_table_1():
    df, banks = synthetic({f"v{i}": i / 10 for i in range(5)}, seeds=2, tau=0.01)
    c = bootstrap(df, banks, b=100)
    t = c.table()
    assert t["all"].tolist() == rank_table(df)["all"].tolist() and c.seeds == {f"v{i}": 2 for i in range(5)}


def test_intervals_cover_the_truth_and_say_something():
    """Twelve variants a small step apart: each true place (by quality) inside its 95% interval in at least 90% of
    cases (rank intervals are conservative), while the intervals are far narrower than the twelve places."""
    quality = {f"v{i:02d}": i / 60 for i in range(12)}
    truth = {v: 12 - i for i, v in enumerate(quality)}
    covered, width = [], []
    for rep in range(12):
        df, banks = synthetic(quality, seeds=2, tau=0.004, rng_seed=100 + rep)
        t = bootstrap(df, banks, b=300, seed=rep).table()
        covered += [lo <= truth[v] <= hi for v, lo, hi in zip(t["variant"], t["rank_lo"], t["rank_hi"])]
        width += list(t["rank_hi"] - t["rank_lo"])
    assert np.mean(covered) >= 0.9 and np.mean(width) < 4


def test_the_shared_prompt_draw_narrows_the_interval_of_a_difference():
    df, banks = synthetic({"a": 0.50, "b": 0.52, "c": 0.2, "d": 0.8}, n=200)
    widths = []
    for paired in (True, False):
        s = bootstrap(df, banks, b=400, paired=paired).scores["all"]
        c = bootstrap(df, banks, b=1, paired=paired).variants
        d = s[:, c.index("a")] - s[:, c.index("b")]
        widths.append(np.quantile(d, 0.975) - np.quantile(d, 0.025))
    assert widths[0] < widths[1]


def test_an_incomplete_grid_has_no_intervals():
    df, banks = synthetic({"a": 0.1, "b": 0.5}, n=50)
    with pytest.raises(ValueError, match="lacks variants .*incomplete grid"):
        bootstrap(df.drop(index=df[(df["variant"] == "a") & (df["steps"] == 5)].index[:1]), banks, b=10)


def test_runs_without_a_bank_are_named(tmp_path):
    df, banks = synthetic({"a": 0.1, "b": 0.5}, n=20)
    df["run_dir"] = df["run_dir"].map(lambda r: str(tmp_path / r.strip("/")))
    for run in df["run_dir"].unique():
        banks["/" + str(run)[len(str(tmp_path)) + 1:]].save(f"{run}/evidence.safetensors")
    assert missing_banks(df) == []
    gone = df["run_dir"].iloc[0]
    (tmp_path / gone / "evidence.safetensors").unlink()
    assert missing_banks(df) == [gone]
    assert missing_banks(df.assign(evaluator="another")) == sorted(df["run_dir"].unique())
    assert missing_banks(df.assign(ckpt_step=200)) == sorted(df["run_dir"].unique())  # another checkpoint's rows
    assert missing_banks(df.assign(clip_score=df["clip_score"] + 0.01)) == sorted(df["run_dir"].unique())


def test_banks_are_read_beside_the_results_even_after_a_move(tmp_path):
    import shutil

    from analysis.collect import collect

    df, banks = synthetic({"a": 0.1, "b": 0.5}, n=20)
    sweep = _write_sweep(tmp_path / "old", df, banks)
    shutil.move(str(sweep), str(tmp_path / "new"))  # the rows still name the old run folders
    rows, _ = collect(tmp_path / "new")
    assert missing_banks(rows) == [] and len(bootstrap(rows, b=20).variants) == 2


def test_runs_evaluated_with_different_samples_are_refused():
    df, banks = synthetic({"a": 0.1, "b": 0.5}, n=20)
    df2, banks2 = synthetic({"c": 0.9}, n=30)
    with pytest.raises(ValueError, match="different samples or prompts"):
        bootstrap(pd.concat([df, df2], ignore_index=True), {**banks, **banks2}, b=10)


def test_correlations_come_with_intervals():
    from scipy.stats import spearmanr

    from analysis.confidence import correlation_interval, inside_intervals

    quality = {f"v{i:02d}": i / 60 for i in range(12)}
    a = bootstrap(*synthetic(quality, rng_seed=1), b=400)
    b = bootstrap(*synthetic(quality, rng_seed=2), b=400, seed=1)
    truth = pd.DataFrame({"variant": list(quality), "all": [12 - i for i in range(12)]})
    lo, hi, n = correlation_interval(a, truth)
    point = spearmanr(a.point.set_index("variant").loc[list(quality), "all"], truth["all"]).statistic
    assert n == 12 and lo <= point <= hi and hi - lo < 0.5  # an interval around the point that says something
    lo2, hi2, _ = correlation_interval(a, b)  # two seeds' sweeps: both resampled
    assert correlation_interval(a, bootstrap(*synthetic(quality, rng_seed=3), b=50))[2] == 12  # fewer replicates
    assert -1 <= lo2 <= hi2 <= 1 and hi2 > 0.5
    assert inside_intervals(a, a.point) == (12, 12)  # a table lies inside its own intervals
    far = a.point.assign(all=a.point["all"] + 50)
    assert inside_intervals(a, far) == (0, 12)


def _write_sweep(root, df, banks):
    """A sweep folder as evaluation leaves it: each run's results.csv and evidence bank."""
    from rfsweep.results import write_results

    df = df.assign(ckpt_step=100, val_loss=0.1)
    for run, part in df.groupby("run_dir"):
        folder = root / run.strip("/")
        write_results(folder / "results.csv", part.assign(run_dir=str(folder)))
        banks[run].save(folder / "evidence.safetensors")
    return root


def test_rank_table_pools_seeds_and_shows_what_pairing_gains(tmp_path, capsys):
    from analysis.__main__ import main
    from rfsweep.results import SETTINGS, WEIGHTS

    quality = {f"v{i:02d}": i / 40 for i in range(8)}
    paper = [(w, s, c) for w in WEIGHTS for s, c in SETTINGS]  # a sweep without a manifest is checked against them
    a = _write_sweep(tmp_path / "a", *synthetic(quality, rng_seed=1, settings=paper))
    df, banks = synthetic(quality, rng_seed=2, settings=paper)
    b = _write_sweep(tmp_path / "b", df.assign(seed=1), banks)
    widths = {}
    for flag in ([], ["--unpaired"]):
        out = tmp_path / ("out" + "".join(flag))
        assert main(["rank-table", "--results", str(a), "--also", str(b), "--out", str(out), "--bootstrap", "300",
                     *flag]) == 0
        err = capsys.readouterr().err
        assert "training seeds per variant [2]" in err  # the two sweeps are two seeds of every variant
        widths[bool(flag)] = float(err.split("difference of neighbours' averaged ranks ")[1].split(";")[0])
        assert pd.read_csv(out / "table1.csv")["p_rank1"].sum() >= 1 - 1e-9
    assert widths[False] < widths[True]
    assert main(["correlate", str(a), str(b), "--bootstrap", "200"]) == 0
    said = capsys.readouterr().out
    assert "95% interval of rho" in said and "averaged ranks of the second sweep lie inside" in said


def test_claims_are_tested_with_their_intervals_and_holm():
    from analysis.confidence import compare

    quality = {"weak": 0.1, "mid": 0.5, "strong": 0.9}
    df, banks = synthetic(quality)
    twin = df[df["variant"] == "mid"].assign(variant="twin", run_dir=lambda d: d["run_dir"] + "-twin")
    banks.update({r + "-twin": banks[r] for r in df.loc[df["variant"] == "mid", "run_dir"]})
    conf = bootstrap(pd.concat([df, twin], ignore_index=True), banks, b=300)
    summary, per = compare(conf, [("strong", "weak"), ("mid", "twin")])
    s = summary.set_index("claim")
    assert s.loc["strong > weak", "p_ahead"] == 1.0 and s.loc["strong > weak", "p"] == 1 / 301  # (0 + 1) / (B + 1)
    assert s.loc["mid > twin", "p"] == 1.0  # identical: never ahead
    assert (s["p_holm"] >= s["p"]).all() and s.loc["mid > twin", "p_holm"] == 1.0
    sw = per[per["claim"] == "strong > weak"]
    assert (sw["p_dominates"] == 1.0).all()
    clip = sw[sw["metric"] == "clip_score"]
    assert (clip["lo"] > 0).all()  # the CLIP difference's interval excludes 0
    tw = per[per["claim"] == "mid > twin"]
    assert (tw["p_dominates"] == 0).all() and (tw["lo"] == 0).all() and (tw["hi"] == 0).all()
    with pytest.raises(ValueError, match="not in the sweep"):
        compare(conf, [("strong", "absent")])


def test_friedman_is_scipys_over_data_set_blocks(tmp_path):
    from scipy.stats import friedmanchisquare

    from analysis.confidence import block_ranks, cd_diagram, friedman

    df, _ = synthetic({f"v{i}": i / 10 for i in range(5)}, seeds=3, datasets=("a", "b", "c"))
    t = friedman(df)
    r = block_ranks(df)
    assert r.shape == (3, 5)  # blocks: 3 data sets (their seeds share prompts and noise), each over its 4 settings
    assert t.chi2 == pytest.approx(friedmanchisquare(*[r[c] for c in r.columns]).statistic) and t.p < 0.05
    assert t.mean_ranks.idxmin() == "v4" and t.pvalues.shape == (5, 5)
    assert cd_diagram(t.mean_ranks, t.pvalues, tmp_path / "cd.png").stat().st_size > 5000


def test_power_recovers_the_variances_it_was_given():
    """Synthetic CLIP similarities: per sample noise 0.05 in each run (a paired difference: 0.05 * sqrt 2), seeds
    moving quality by tau = 0.05 (CLIP by 0.1 tau = 0.005)."""
    from analysis.confidence import needed, power

    df, banks = synthetic({f"v{i}": i / 10 for i in range(8)}, seeds=4, tau=0.05, n=400)
    p = power(df, banks)
    clip = p[p["metric"] == "clip_score"].iloc[0]
    assert clip["sample_sd"] == pytest.approx(0.05 * np.sqrt(2), rel=0.1)
    assert clip["seed_sd"] == pytest.approx(0.005, rel=0.25)  # the seeds share prompts and noise: paired
    se = np.sqrt(clip["sample_sd"] ** 2 / 400 + 2 * clip["seed_sd"] ** 2 / 4)
    assert clip["mde"] == pytest.approx(2.8016 * se, rel=1e-3)
    at_mde = needed(p, clip["mde"], "a", "clip_score")
    assert at_mde["prompts"] == pytest.approx(400, abs=1) and at_mde["seeds"] == pytest.approx(4, abs=1)
    assert needed(p, clip["mde"] / 10, "a", "clip_score")["prompts"] is None  # seeds limit: no prompts suffice
    one = power(*synthetic({"a": 0.1, "b": 0.5, "c": 0.9}, n=100))
    assert one["seed_sd"].isna().all() and (one["seeds"] == 1).all()
    assert needed(one, 0.01, "a", "clip_score")["seeds"] is None  # one seed: the seed-to-seed variation is unknown


def test_power_command(tmp_path, capsys):
    from analysis.__main__ import main

    df, banks = synthetic({"eps/cos": 0.1, "v/cos": 0.5, "rf": 0.9}, seeds=2, tau=0.02, n=100)
    sweep = _write_sweep(tmp_path / "s", df, banks)
    assert main(["power", str(sweep), "--pair", "rf", "v/cos"]) == 0
    out = capsys.readouterr().out
    assert "| clip_score |" in out and "To separate rf from v/cos" in out
    (next(sweep.rglob("evidence.safetensors"))).unlink()
    assert main(["power", str(sweep)]) == 2 and "no evidence bank" in capsys.readouterr().err


def test_table2_cells_and_fig3_medians_have_intervals(tmp_path):
    from analysis.figures import fig3

    quality = {"rf": 0.9, "rf/cosmap": 0.8, "eps/cos": 0.2, "v/cos": 0.5}
    df, banks = synthetic(quality, settings=[("ema", 5, 5.0), ("ema", 25, 5.0), ("ema", 50, 5.0)])
    df["family"] = df["variant"].str.split("/").str[0]
    conf = bootstrap(df, banks, b=300)
    t2 = conf.table2_intervals().set_index(["variant", "metric"])
    assert len(t2) == 4 * 2 and (t2["lo"] <= t2["hi"]).all()
    point = df[(df["steps"] == 25)].set_index(["variant"])
    for v in quality:
        assert t2.loc[(v, "clip_score"), "lo"] <= point.loc[v, "clip_score"] <= t2.loc[(v, "clip_score"), "hi"]
    assert t2.loc[("eps/cos", "clip_score"), ["place_lo", "place_hi"]].tolist() == [4, 4]  # far behind in CLIP
    bands = conf.family_bands()
    assert set(bands["family"]) == {"rf", "eps", "v"} and sorted(set(bands["steps"])) == [5, 25, 50]
    assert (bands["lo"] <= bands["hi"]).all()
    assert fig3(df, tmp_path / "fig3.png", bands=bands).stat().st_size > 10_000


def test_table2_intervals_and_bands_are_per_backbone(tmp_path):
    """Two backbones that order the variants oppositely: each backbone's places and bands are its own."""
    from analysis.figures import fig3

    settings = [("ema", 5, 5.0), ("ema", 25, 5.0)]
    parts, banks = [], {}
    for bb, quality in [("dit", {"rf": 0.9, "eps/cos": 0.1, "v/cos": 0.5}),
                        ("mmdit", {"rf": 0.1, "eps/cos": 0.9, "v/cos": 0.5})]:
        df, b = synthetic(quality, settings=settings, rng_seed=len(parts))
        df = df.assign(backbone=bb, run_dir=bb + df["run_dir"])
        parts.append(df)
        banks.update({bb + run: bank for run, bank in b.items()})
    df = pd.concat(parts, ignore_index=True)
    df["family"] = df["variant"].str.split("/").str[0]
    conf = bootstrap(df, banks, b=200)
    t2 = conf.table2_intervals().set_index(["backbone", "variant", "metric"])
    assert len(t2) == 2 * 3 * 2
    assert t2.loc[("dit", "rf", "clip_score"), ["place_lo", "place_hi"]].tolist() == [1, 1]
    assert t2.loc[("mmdit", "rf", "clip_score"), ["place_lo", "place_hi"]].tolist() == [3, 3]
    bands = conf.family_bands().set_index(["backbone", "family", "steps", "metric"])
    assert len(bands) == 2 * 3 * 2 * 2
    assert bands.loc[("dit", "rf", 25, "clip_score"), "lo"] > bands.loc[("mmdit", "rf", 25, "clip_score"), "hi"]
    assert fig3(df, tmp_path / "fig3.png", bands=bands.reset_index()).stat().st_size > 10_000


def test_the_dry_run_scales_a_reference_sweeps_variation_to_its_plan(tmp_path):
    """The expected resolution of a planned sweep is the reference's measured variances at the plan's samples and
    seeds: four times the prompts and more seeds resolve a smaller difference; a data set the reference lacks and a
    reference without banks are said in one line."""
    from analysis.confidence import resolution, sweep_variances
    from rfsweep.errors import UserError
    from rfsweep.run.plan import expected_resolution
    from tests.helpers import compose_cfg

    df, banks = synthetic({"eps/cos": 0.1, "v/cos": 0.5, "rf": 0.9}, seeds=2, tau=0.02, n=100, datasets=("shapes",))
    sweep = _write_sweep(tmp_path / "ref", df, banks)
    plan = [compose_cfg([f"formulation.variant={v}", "data=shapes", "eval.n_samples=400", f"seed={s}"])
            for v in ("rf", "eps/cos") for s in range(3)]
    out = expected_resolution(str(sweep), plan + [compose_cfg(["data=colour_digits"])])
    v = sweep_variances(sweep)
    want = resolution(v, prompts=400, seeds=3)
    clip = want[want["metric"] == "clip_score"].iloc[0]
    line = next(ln for ln in out.splitlines() if "| clip_score" in ln)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:4] == ["shapes", "clip_score", "400", "3"] and float(cells[6]) == pytest.approx(clip["mde"], 1e-3)
    assert clip["mde"] < resolution(v)[lambda r: r["metric"] == "clip_score"]["mde"].iloc[0]
    assert "colour_digits: not in reference_sweep" in out
    cycled = _write_sweep(tmp_path / "cycled", df.assign(n_samples=150), banks)  # 150 samples over 100 captions
    line = next(ln for ln in expected_resolution(str(cycled), plan).splitlines() if "| clip_score" in ln)
    assert [c.strip() for c in line.strip("|").split("|")][2] == "100"  # 400 samples still see 100 prompts
    (next(sweep.rglob("evidence.safetensors"))).unlink()
    with pytest.raises(UserError, match="reference_sweep=.*no evidence bank"):
        expected_resolution(str(sweep), plan)


def test_a_sweeps_dry_run_prints_its_expected_resolution(tmp_path):
    from tests.helpers import run_cli, tiny

    df, banks = synthetic({"eps/cos": 0.1, "v/cos": 0.5, "rf": 0.9}, seeds=2, tau=0.02, n=100, datasets=("shapes",))
    sweep = _write_sweep(tmp_path / "ref", df, banks)
    r = run_cli([*tiny(tmp_path), "-m", "dry_run=true", f"reference_sweep={sweep}", "data=shapes", "seed=0,1,2",
                 "formulation.variant=rf,eps/cos", "eval.n_samples=400"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("expected resolution") == 1 and r.stdout.count("dry-run: variant=") == 6
    row = next(ln for ln in r.stdout.splitlines() if "| clip_score" in ln)
    assert [c.strip() for c in row.strip("|").split("|")][:4] == ["shapes", "clip_score", "400", "3"]
    bad = run_cli([*tiny(tmp_path), "dry_run=true", f"reference_sweep={tmp_path / 'nowhere'}"])
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: reference_sweep=")
