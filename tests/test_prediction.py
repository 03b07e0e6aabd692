"""Prediction for a replication (`analysis.prediction`, `Confidence.new_seed`): the place one new training seed would
give, checked by leaving one seed out where the seeds dominate; its draw has the variance of a new run's deviation
from the seeds' mean; one seed predicts nothing."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.confidence import bootstrap
from analysis.prediction import held_out_places, leave_one_seed_out
from analysis.tables import NEW_SEED_HEADING, write_table1
from tests.synthetic_evidence import coverage_world, synthetic


@pytest.mark.parametrize("ratio", [6.0, 20.0])
def test_leaving_one_seed_out_the_prediction_holds_the_held_out_places(ratio):
    """Three seeds of 12 variants, seed / sampling variance 6 and 20: the 95% prediction intervals from two seeds hold
    the third seed's places (measured 0.97-0.98 over 10 worlds each); the confidence intervals of the seeds' mean,
    which leave out a new run's own deviation, hold fewer."""
    w = coverage_world(ratio, 12)
    pred, mean = [], []
    for rep in range(4):
        df, banks = w.evidence(seeds=3, rng_seed=100 + rep)
        r = leave_one_seed_out(df, banks, b=300, seed=rep)
        pred.append(r["inside"].mean())
        for held, part in r.groupby("held"):
            rest = df[df["seed"] != held]
            t = bootstrap(rest, {x: banks[x] for x in set(rest["run_dir"])}, b=300, seed=rep).places("all")
            t = t.set_index("variant").reindex(part["variant"])
            mean.append(((t["rank_lo"].to_numpy() <= part["place"].to_numpy())
                         & (part["place"].to_numpy() <= t["rank_hi"].to_numpy())).mean())
    assert np.mean(pred) >= 0.93
    assert np.mean(pred) > np.mean(mean)


def _level(df, banks):
    from analysis.evidence import influence_by_prompt
    from analysis.seed_level import SeedLevel

    rows, _, infl, counts = influence_by_prompt(df, {r: banks[r] for r in set(df["run_dir"])})
    names = ["clip_score", "fid"]
    return rows, SeedLevel(rows, rows[names].to_numpy(np.float64),
                           [np.stack([infl[m][i] for m in names]) for i in range(len(rows))],
                           np.array([c.sum() for c in counts]), names)


@pytest.mark.parametrize("tau", [0.0, 0.05])
def test_a_new_run_lands_where_the_prediction_says(tau):
    """300 equal variants with three seeds on the same prompts: from seeds 0 and 1, a third seed's run deviates from
    the two seeds' mean by (1 + 1/K) x the pooled between-run variance on average (measured 0.95-1.04; tau^2 alone
    would give 1.4-3.6), and the 95% prediction interval of each variant's value (the seeds' mean plus the drawn
    deviation) holds the third seed's value about 95% of the time, in both metrics, whether seeds add nothing
    (tau 0) or dominate."""
    df, banks = synthetic({f"v{i:03d}": 0.5 for i in range(300)}, seeds=3, n=40, d=2, tau=tau,
                          settings=[("ema", 50, 5.0)], rng_seed=4)
    rows, level = _level(df[df["seed"] < 2], banks)
    draws = level.draw_new_run(2000, np.random.default_rng(0))[("a", "mlp")][:, :, 0]  # (B, V, M)
    variants = level.pools[("a", "mlp")]["variants"]
    third = df[df["seed"] == 2].set_index("variant").reindex(variants)
    mean = rows.groupby("variant")[["clip_score", "fid"]].mean().reindex(variants).to_numpy()
    between = level.components.set_index("metric")["between"]
    for m, name in enumerate(["clip_score", "fid"]):
        dev = third[name].to_numpy() - mean[:, m]
        assert np.mean(dev ** 2) / (1.5 * between[name]) == pytest.approx(1.0, abs=0.2)
        lo, hi = np.quantile(draws[..., m], [0.025, 0.975], axis=0)
        assert 0.91 <= np.mean((lo <= dev) & (dev <= hi)) <= 0.99


def test_one_seed_predicts_nothing(tmp_path):
    df, banks = synthetic({f"v{i}": i / 10 for i in range(4)}, n=50)
    c = bootstrap(df, banks, b=50)
    assert c.new_seed == {} and "new_lo" not in c.table().columns
    with pytest.raises(ValueError, match="fewer than 2 seeds"):
        held_out_places(*synthetic({f"v{i}": i / 10 for i in range(4)}, seeds=2, n=50), held=0, b=50)


def test_table1_shows_the_prediction(tmp_path):
    df, banks = synthetic({f"v{i}": i / 10 for i in range(4)}, seeds=2, n=50, tau=0.05)
    c = bootstrap(df, banks, b=100)
    from analysis.ranking import rank_table

    write_table1(rank_table(df), tmp_path, confidence=c.table())
    md = (tmp_path / "table1.md").read_text()
    assert NEW_SEED_HEADING in md and "prediction interval" in md
    lo, hi = c.table()[["new_lo", "new_hi"]].to_numpy().T
    m_lo, m_hi = c.table()[["rank_lo", "rank_hi"]].to_numpy().T
    assert (lo <= m_lo).all() and (hi >= m_hi).all() and ((lo < m_lo) | (hi > m_hi)).any()


def test_the_held_out_command_counts_the_places_inside(tmp_path, capsys):
    """`python -m analysis held-out A --also B --also C`: each seed held out in turn, its count printed and written."""
    import pandas as pd

    from analysis.__main__ import main
    from rfsweep.results import SETTINGS, WEIGHTS
    from tests.test_confidence import _write_sweep

    paper = [(w, s, c) for w in WEIGHTS for s, c in SETTINGS]
    df, banks = synthetic({f"v{i}": i / 20 for i in range(5)}, seeds=3, n=50, tau=0.05, settings=paper)
    sweeps = [str(_write_sweep(tmp_path / f"s{k}", df[df["seed"] == k], banks)) for k in range(3)]
    assert main(["held-out", sweeps[0], "--also", sweeps[1], "--also", sweeps[2], "--bootstrap", "100",
                 "--out", str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out
    r = pd.read_csv(tmp_path / "out" / "held_out.csv")
    assert sorted(set(r["held"])) == [0, 1, 2] and len(r) == 15
    assert f"all: {int(r['inside'].sum())} of 15" in said and "seed 2 held out:" in said
    assert main(["held-out", sweeps[0], "--also", sweeps[1], "--bootstrap", "50"]) == 2  # two seeds: refused
    assert "fewer than 2 seeds" in capsys.readouterr().err
