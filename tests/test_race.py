"""The race (hydra/sweeper=race): its rule, margin, decision log and config checks, then whole races of a tiny grid
(tests marked long): stopped variants never trained past their rung, survivors bit-identical to straight runs, and a
controller killed during a rung that reruns to the same decision log byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from analysis.__main__ import main as analysis_main
from analysis.race import Rule, censored, decide, evaluation_nfe, margins
from analysis.race_log import CALIBRATED, DecisionLog
from rfsweep import runfolder
from rfsweep.errors import ConfigError
from rfsweep.run.race_control import RaceConf
from rfsweep.train.checkpoint_io import resume_checkpoint
from tests.helpers import ROOT, _env, run_cli
from tests.wandb_files import offline_runs, read_run


def places(rows):
    return pd.DataFrame(rows, columns=["variant", "rank", "rank_lo", "rank_hi"])


TEN = places([(f"v{i}", i + 1, max(1, i - 1), i + 3) for i in range(10)])  # best plausible place = place - 2


def conf(**kw):
    base = dict(rungs=[0.25, 0.5], top=3, margins=[1, 0], calibration=None, calibrate=False, keep=0.0, audit=0,
                bootstrap=1000, seed=0)
    return RaceConf(**{**base, **kw})


def test_a_variant_stops_only_when_its_best_plausible_place_lies_beyond_top_plus_margin():
    out = decide(TEN, Rule(top=3, margin=1, keep=0.0, audit=0), seed=0)
    # rank_lo of v_i is max(1, i - 1): beyond 3 + 1 from v6 on (v5's best plausible place 4 is not beyond)
    assert out["go_on"] == ["v0", "v1", "v2", "v3", "v4", "v5"]
    assert out["stopped"] == ["v6", "v7", "v8", "v9"] and out["audit"] == []
    wider = decide(TEN, Rule(top=3, margin=4, keep=0.0, audit=0), seed=0)
    assert wider["stopped"] == ["v9"]  # a larger margin stops fewer


def test_keep_holds_the_best_placed_fraction_and_at_least_the_top_group():
    out = decide(TEN, Rule(top=3, margin=0, keep=0.6, audit=0), seed=0)
    assert out["go_on"] == [f"v{i}" for i in range(6)]
    tight = places([(f"v{i}", i + 1, i + 1, i + 1) for i in range(5)])
    assert decide(tight, Rule(top=3, margin=0, keep=0.0, audit=0), seed=0)["go_on"] == ["v0", "v1", "v2"]


def test_audit_draws_stopped_variants_deterministically_with_the_seed():
    rule = Rule(top=3, margin=0, keep=0.0, audit=2)
    a, b = decide(TEN, rule, seed=5), decide(TEN, rule, seed=5)
    assert a == b and len(a["audit"]) == 2 and set(a["audit"]) <= set(a["stopped"])
    draws = {tuple(decide(TEN, rule, seed=s)["audit"]) for s in range(20)}
    assert len(draws) > 1  # the seed draws them, not a fixed choice
    none_stopped = decide(TEN, Rule(top=3, margin=20, keep=0.0, audit=2), seed=0)
    assert none_stopped["stopped"] == [] and none_stopped["audit"] == []


def test_margin_is_the_largest_shift_of_a_final_top_variant_beyond_top():
    rung = places([("a", 1, 1, 3), ("b", 2, 1, 4), ("c", 6, 5, 9), ("d", 4, 2, 8), ("e", 9, 7, 10)])
    final = places([("c", 1, 1, 2), ("a", 2, 1, 3), ("d", 3, 2, 4), ("b", 4, 3, 5), ("e", 5, 5, 5)])
    assert margins(rung, final, top=3) == 2  # c: best plausible 5 at the rung, 3 beyond... 5 - 3 = 2
    assert margins(rung, final, top=4) == 1
    assert margins(rung.assign(rank_lo=1), final, top=3) == 0


def test_decision_log_appends_whole_lines_and_refuses_a_damaged_one(tmp_path):
    log = DecisionLog(tmp_path)
    assert log.records() == []
    log.append({"rung": 1, "b": [1, 2]})
    log.append({"end": True})
    assert log.records() == [{"b": [1, 2], "rung": 1}, {"end": True}]
    assert log.path.read_text() == '{"b": [1, 2], "rung": 1}\n{"end": true}\n'
    log.path.write_text(log.path.read_text() + '{"rung": 2, "al')
    with pytest.raises(ValueError, match="line 3 is not JSON"):
        log.records()


def test_censored_rows_are_the_stopped_variants_that_were_not_audited():
    records = [{"rung": 1, "step": 100, "stopped": ["x", "y"], "audit": ["y"],
                "places": {"x": [9, 7, 12], "y": [8, 6, 11], "z": [1, 1, 2]}}, {"end": True}]
    rows = censored(records)
    assert rows.to_dict("records") == [{"variant": "x", "stopped_rung": 1, "stopped_step": 100, "rung_rank": 9,
                                        "rung_lo": 7, "rung_hi": 12, "diverged": ""}]


def test_diverged_variants_are_censored_without_a_place_where_they_diverged():
    from analysis.race import censored_markdown, decisions

    why = "NonFiniteLossError: training loss is nan at step {}"
    records = [{"rung": 1, "step": 100, "stopped": ["x"], "audit": [], "rule": {"top": 1},
                "diverged": {"w": {"run": "a/w", "step": 37, "reason": why.format(37)}},
                "places": {"x": [3, 2, 3], "z": [1, 1, 2], "u": [2, 1, 3]}},
               {"end": True, "finished": ["z"], "audit": [], "stopped": ["u", "w", "x"], "max_steps": 400,
                "diverged": {"u": {"run": "a/u", "step": 250, "reason": why.format(250)}}}]
    rows = censored(records)
    assert list(rows["variant"]) == ["u", "w", "x"] and list(rows["stopped_step"]) == [250, 37, 100]
    assert rows["rung_rank"].isna().tolist() == [True, True, False] and rows["diverged"].iloc[0] == why.format(250)
    table = censored_markdown(records, places([("z", 1, 1, 1)]))
    assert "| u | diverged at step 250 of 400 (after the last rung) | none: NonFiniteLossError | none |" in table
    assert "| w | diverged at step 37 of 400 (before rung 1) | none: NonFiniteLossError | none |" in table
    assert "| x | rung 1 (step 100 of 400) | 3 [2-3] | at least 2 |" in table
    shown = decisions(records).query("decision == 'diverged'").set_index("variant")  # u went on at rung 1 first
    assert sorted(shown.index) == ["u", "w"] and shown.loc["w", "rung"] == 1 and shown.loc["w", "step"] == 100
    assert pd.isna(shown.loc["u", "rung"]) and shown.loc["u", "step"] == 250


def test_a_rung_where_every_variant_diverged_ends_the_race_instead_of_waiting_for_it(tmp_path):
    from rfsweep.run.race_control import Job, run_race

    jobs = [Job([f"formulation.variant={v}"], v, f"seed0/{v}") for v in "ab"]
    for j in jobs:  # as training records a non-finite loss
        runfolder.write_status(tmp_path / j.run, "failed", step=3, reason="NonFiniteLossError: training loss is nan")
    launched = []
    assert run_race(conf(rungs=[0.5], margins=[0]), tmp_path, 40, 8, jobs, launched.append) == 0
    rung, end = DecisionLog(tmp_path).records()
    assert sorted(rung["diverged"]) == ["a", "b"] and rung["places"] == {} and rung["go_on"] == []
    assert end["finished"] == [] and end["stopped"] == ["a", "b"] and all(b == [] for b in launched)
    assert "diverged" in runfolder.read_outcome(tmp_path / "seed0/a")["reason"]


def test_a_raced_sweep_never_ranks_the_finished_runs_of_a_variant_it_stopped(tmp_path):
    """A variant whose run on one data set diverged after the last rung while its other run finished is stopped:
    the finished run's results are not read as if the variant were complete (it would be ranked on part of the grid
    beside its censored row)."""
    from analysis.collect import collect
    from rfsweep.results import REAL, SETTINGS, WEIGHTS, write_results
    from tests.test_results import grid

    df = grid()
    jobs = []
    for i, ((v, d), rows) in enumerate(df[df["weights"] != REAL].groupby(["variant", "dataset"])):
        jobs.append({"variant": v, "dataset": d, "backbone": "dit-s", "seed": 0, "run": f"{d}/{i}"})
        write_results(tmp_path / jobs[-1]["run"] / "results.csv", rows)
    write_results(tmp_path / "real" / "results.csv", df[df["weights"] == REAL])
    (tmp_path / "manifest.json").write_text(json.dumps({"jobs": jobs, "settings": [list(s) for s in SETTINGS],
                                                        "weights": list(WEIGHTS)}))
    variants = sorted({j["variant"] for j in jobs})
    gone = variants[0]  # its runs' results are all there, as if its other run had finished before this one diverged
    DecisionLog(tmp_path).append({"end": True, "finished": variants[1:], "audit": [], "stopped": [gone],
                                  "diverged": {gone: {"run": jobs[0]["run"], "step": 7, "reason": "NonFiniteLoss"}}})
    rows, manifest = collect(tmp_path)
    assert set(rows.loc[rows["weights"] != REAL, "variant"]) == set(variants[1:])
    assert gone not in {j["variant"] for j in manifest["jobs"]} and (rows["weights"] == REAL).sum() == 2

def test_evaluation_counts_two_network_calls_per_step_under_guidance():
    df = pd.DataFrame({"weights": ["ema", "ema", "real"], "steps": [10, 25, 0], "cfg": [1.0, 5.0, 0.0],
                       "n_samples": [200, 200, 200]})
    assert evaluation_nfe(df) == 200 * 10 + 200 * 25 * 2


@pytest.mark.parametrize("kw, key", [
    (dict(rungs=[0.5, 0.25]), "rungs"), (dict(rungs=[0.0, 0.5]), "rungs"), (dict(rungs=[1.0]), "rungs"),
    (dict(rungs=[0.25, 0.26]), "equal steps"), (dict(top=0), "top=0"), (dict(keep=1.5), "keep=1.5"),
    (dict(margins=[1]), "margins"), (dict(margins=None), "calibration=null"), (dict(bootstrap=10), "bootstrap=10"),
])
def test_race_config_errors_name_the_key_in_one_line(kw, key):
    with pytest.raises(ConfigError) as e:
        conf(**kw).check(max_steps=40)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_margins_come_from_a_calibration_that_measured_the_same_rungs(tmp_path):
    assert conf().check(400) == [100, 200]
    (tmp_path / CALIBRATED).write_text(json.dumps({"rungs": [0.25, 0.5], "top": 3, "margins": [4, 2]}))
    assert conf(margins=None, calibration=str(tmp_path)).margin_list(2) == [4, 2]
    assert conf(calibrate=True).margin_list(2) == [0, 0]
    with pytest.raises(ConfigError, match="calibration measured rungs"):
        conf(margins=None, calibration=str(tmp_path), top=2).margin_list(2)
    with pytest.raises(ConfigError, match="no readable"):
        conf(margins=None, calibration=str(tmp_path / "none")).margin_list(2)

    (tmp_path / CALIBRATED).write_text(json.dumps({"rungs": [0.25, 0.5], "top": 3, "keep": 0.0, "audit": 0, "seed": 0,
                                                   "bootstrap": 500, "margins": [4, 2]}))
    with pytest.raises(ConfigError, match="bootstrap=1000 but the calibration measured .* bootstrap=500"):
        conf(margins=None, calibration=str(tmp_path)).margin_list(2)


def _decided_rung(jobs, seed=0, bootstrap=1000):
    """A rung record as `run_race` writes it for `jobs` under `conf()` (margin 1 at the first rung)."""
    runs = {}
    for j in jobs:
        runs.setdefault(j.variant, []).append(j.run)
    alive = sorted(runs)
    return {"rung": 1, "step": 100, "alive": alive, "runs": runs, "seed": seed, "bootstrap": bootstrap,
            "rule": {"top": 3, "margin": 1, "keep": 0.0, "audit": 0}, "go_on": alive, "stopped": [], "audit": [],
            "places": {v: [k + 1, k + 1, k + 1] for k, v in enumerate(alive)}}


@pytest.mark.parametrize("changed, key", [
    (dict(runs="seed1"), "runs=a: ['seed0/a'"), (dict(seed=7), "seed=7"), (dict(bootstrap=500), "bootstrap=500"),
    (dict(margin=4), "decided with margin=4, this race has margin=1"),
])
def test_a_decided_rung_is_replayed_only_for_the_runs_seeds_and_rule_that_decided_it(tmp_path, changed, key):
    from rfsweep.run.race_control import Job, run_race

    jobs = [Job([f"formulation.variant={v}"], v, f"seed0/{v}") for v in "abcd"]
    rec = _decided_rung(jobs, seed=changed.get("seed", 0), bootstrap=changed.get("bootstrap", 1000))
    rec["rule"]["margin"] = changed.get("margin", 1)
    DecisionLog(tmp_path).append(rec)
    if "runs" in changed:  # the same race under the same name, another training seed: other run folders
        jobs = [Job(j.overrides, j.variant, j.run.replace("seed0", changed["runs"])) for j in jobs]
    launched = []
    with pytest.raises(ConfigError) as e:
        run_race(conf(), tmp_path, 400, 8, jobs, launched.append)
    assert key in str(e.value) and "\n" not in str(e.value) and not launched


# -- whole races of a tiny grid (5 variants x 2 data sets, 160 steps, one rung at 80) ----------------------------

VARIANTS = ["rf/lognorm(1.00, 1.40)", "rf/lognorm(1.00, 1.00)", "edm(-1.20, 0.60)", "rf/lognorm(-1.00, 0.20)",
            "edm(-0.60, 0.60)"]
COMMON = ["+experiment=demo", "trainer.max_steps=160", "trainer.val_every=20", "trainer.ckpt_every=20",
          "trainer.n_val=16", "trainer.warmup_steps=10", "eval.n_samples=128", "eval.batch_size=128",
          "eval.weights=[ema]", "eval.settings=[[5,5.0]]", "rung.samples=128", "rung.settings=[[5,5.0]]"]


def _escaped(v: str) -> str:
    return v.replace("(", r"\(").replace(")", r"\)").replace(",", r"\,").replace(" ", r"\ ")


def race_args(tmp) -> list[str]:
    return ["-m", *COMMON, "hydra/sweeper=race", "hydra/launcher=basic", "name=r",
            "formulation.variant=" + ",".join(_escaped(v) for v in VARIANTS), "data=shapes,colour_digits",
            f"paths.sweeps={tmp}/multirun", f"paths.cache={tmp}/cache", "hydra.sweeper.rungs=[0.5]",
            "hydra.sweeper.margins=[0]", "hydra.sweeper.top=1", "hydra.sweeper.keep=0.2", "hydra.sweeper.audit=1",
            "hydra.sweeper.bootstrap=200"]


def checkpoints(sweep):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(sweep.rglob("checkpoints/step-*.ckpt"))}


@pytest.mark.long
def test_race_stops_at_the_rung_continues_survivors_bit_identically_and_reruns_to_the_same_log(tmp_path):
    r = run_cli(race_args(tmp_path), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "multirun" / "r"
    log = (sweep / "race.jsonl").read_bytes()
    rung, end = DecisionLog(sweep).records()
    assert rung["rung"] == 1 and rung["step"] == 80 and end["end"]
    stopped, audit = set(end["stopped"]), set(end["audit"])
    assert stopped and audit and not stopped & audit and len(audit) == 1
    assert set(end["finished"]) == set(rung["go_on"]) | audit
    runs = {p.parent: resume_checkpoint(p.parent)[1] for p in sweep.rglob(runfolder.CHECKPOINTS)}
    assert len(runs) == 10
    for run, step in runs.items():
        variant = json.loads((run / "config.json").read_text())["formulation"]["variant"]
        if variant in stopped:  # never trained past the rung; reported stopped, not failed or unfinished
            assert step == 80 and runfolder.read_outcome(run)["outcome"] == "stopped", run
            assert runfolder.read_status(run)["state"] == runfolder.PAUSED
            assert not (run / "results.csv").exists() and (run / "rungs" / "80" / "results.csv").is_file()
        else:
            assert step == 160 and runfolder.read_status(run)["state"] == runfolder.FINISHED, run
    assert end["spent"]["train_steps"] == sum(runs.values())
    assert "race: rung 1 (step 80 of 160)" in r.stdout and "race: ended:" in r.stdout

    # Table 1 ranks the finishers and lists the stopped variants as censored rows; W&B shows the race
    out = tmp_path / "tables"
    assert analysis_main(["rank-table", "--results", str(sweep), "--out", str(out), "--wandb"]) == 0
    table = (out / "table1.md").read_text()
    ranked = table.split("**Stopped by the race**")[0]
    assert all(f"| {v} |" in ranked for v in end["finished"]) and not any(f"| {v} |" in ranked for v in stopped)
    assert all(f"| {v} | rung 1 (step 80 of 160)" in table for v in stopped)
    assert f"Audit: 1 stopped variants carried to the end ({next(iter(audit))})" in table
    compute = json.loads((out / "race_compute.json").read_text())
    assert compute["spent"] == end["spent"] and compute["full"]["train_steps"] == 10 * 160
    (folder,) = offline_runs(out)
    summary = read_run(folder).summary
    shown = json.loads((folder / "files" / summary["study/race/path"]).read_text())
    assert shown["columns"][-1] == "decision" and len(shown["data"]) == len(VARIANTS)
    assert summary["study/race_stopped_per_rung"] == [len(stopped)]

    # a survivor's final weights are those of the same run trained straight to the end
    survivor = sorted(set(rung["go_on"]))[0]
    straight = run_cli([*COMMON, f"formulation.variant={_escaped(survivor)}", "data=shapes", "eval=none",
                        f"paths.runs={tmp_path}/straight", f"paths.cache={tmp_path}/cache"], timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    [a] = [resume_checkpoint(p.parent)[0] for p in (tmp_path / "straight").rglob(runfolder.CHECKPOINTS)]
    [b] = [resume_checkpoint(p.parent)[0] for p in sweep.rglob(f"shapes/*/*/*/{runfolder.CHECKPOINTS}")
           if json.loads((p.parent / "config.json").read_text())["formulation"]["variant"] == survivor]
    sa, sb = (torch.load(p, map_location="cpu", weights_only=True)["state_dict"] for p in (a, b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    # the same command again: nothing retrained, nothing re-decided
    before = checkpoints(sweep)
    again = run_cli(race_args(tmp_path), timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (sweep / "race.jsonl").read_bytes() == log and checkpoints(sweep) == before

    # the controller killed during the rung's launch, then the same command: the same decision log byte for byte
    killed = tmp_path / "killed"
    proc = popen_group(race_args(killed))
    deadline = time.monotonic() + 600
    while len(list((killed / "multirun" / "r").rglob("rungs/80/results.csv"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "the race ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "multirun" / "r" / "race.jsonl").exists()  # killed before the rung was decided
    rerun = run_cli(race_args(killed), timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (killed / "multirun" / "r" / "race.jsonl").read_bytes() == log


def popen_group(args):
    """The race's controller in its own process group (killed with everything it started)."""
    return subprocess.Popen([sys.executable, "-m", "rfsweep", *args], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def test_planned_compute_counts_each_rung_and_the_finishers():
    from analysis.race import planned

    # 4 variants x 2 jobs, rungs at 25 and 50 of 100 steps, rung eval 10 NFE, final 100 NFE; 2 stop at the first rung
    c = planned(4, 2, [25, 50], 100, 10, 100, [2, 0])
    assert c == {"train_steps": 4 * 2 * 25 + 2 * 2 * 25 + 2 * 2 * 50, "eval_nfe": 4 * 2 * 10 + 2 * 2 * 10 + 2 * 2 * 100}
    assert planned(4, 2, [], 100, 10, 100, []) == {"train_steps": 800, "eval_nfe": 800}


def test_replayed_stops_apply_the_rules_to_a_reference_log():
    from analysis.race import replayed_stops

    ref = [{"rung": 1, "places": {r.variant: [r.rank, r.rank_lo, r.rank_hi] for r in TEN.itertuples()}},
           {"rung": 2, "places": {r.variant: [r.rank, r.rank_lo - 1 if r.rank_lo > 1 else 1, r.rank_hi]
                                  for r in TEN.itertuples()}}]
    rules = [Rule(top=3, margin=2, keep=0.0, audit=0), Rule(top=3, margin=0, keep=0.0, audit=0)]
    # rung 1: rank_lo > 5 for v7..v9 (3); rung 2, among v0..v6: rank_lo - 1 > 3 for v6 (rank_lo 5 - 1 = 4)
    assert replayed_stops(ref, rules, seed=0) == [3, 1]


@pytest.mark.long
def test_a_race_dry_run_prints_its_rungs_and_planned_compute_and_writes_nothing(tmp_path):
    r = run_cli(["+experiment=demo", "hydra/sweeper=race", "hydra.sweeper.margins=[5,3]", "dry_run=true", "-m",
                 f"paths.sweeps={tmp_path}/multirun"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "race: 61 variants, 122 jobs; rungs at steps [100, 200] of 400" in r.stdout
    assert "the full grid: 48800 training steps, 16104000 evaluation network evaluations" in r.stdout
    assert "nothing stopped (the most it costs): 48800 training steps (100%)" in r.stdout
    assert not (tmp_path / "multirun").exists()


@pytest.mark.long
def test_margins_measured_on_a_calibration_keep_its_final_top_group_in_a_race_of_the_same_seed(tmp_path):
    """A calibration (calibrate=true: nothing stops, every rung evaluated) measures the margin per rung as the race
    will use it; the same grid and seed raced with those margins keeps the calibration's final top K to the end."""
    base = [a for a in race_args(tmp_path) if not a.startswith(("hydra.sweeper.margins", "name=", "paths.sweeps"))]
    cal = run_cli([*base, "hydra.sweeper.calibrate=true", "name=cal", f"paths.sweeps={tmp_path}/multirun"], timeout=900)
    assert cal.returncode == 0, cal.stderr[-3000:]
    sweep = tmp_path / "multirun" / "cal"
    measured = json.loads((sweep / CALIBRATED).read_text())
    assert measured["rungs"] == [0.5] and measured["top"] == 1 and len(measured["margins"]) == 1
    end = DecisionLog(sweep).records()[-1]
    assert end["stopped"] == [] and end["margins"] == measured["margins"] and len(end["finished"]) == len(VARIANTS)
    # the same margins measured by the command that joins several seeds' calibrations (here the one)
    assert analysis_main(["race-margins", str(sweep), "--out", str(tmp_path / "joint")]) == 0
    assert json.loads((tmp_path / "joint" / CALIBRATED).read_text())["margins"] == measured["margins"]
    out = tmp_path / "caltables"
    assert analysis_main(["rank-table", "--results", str(sweep), "--out", str(out)]) == 0
    first = pd.read_csv(out / "table1.csv")["variant"].iloc[0]

    raced = run_cli([*base, f"hydra.sweeper.calibration={sweep}", "name=raced", f"paths.sweeps={tmp_path}/multirun"],
                    timeout=900)
    assert raced.returncode == 0, raced.stderr[-3000:]
    records = DecisionLog(tmp_path / "multirun" / "raced").records()
    assert records[0]["rule"]["margin"] == measured["margins"][0] and first in records[-1]["finished"]
    # the same log with other margins is refused in one line, nothing launched
    other = run_cli([*base, "hydra.sweeper.margins=[9]", "name=raced", f"paths.sweeps={tmp_path}/multirun"],
                    timeout=600)
    assert other.returncode == 2 and "this race has margin=9" in other.stderr and "Traceback" not in other.stderr
    # a race stops variants: it cannot calibrate
    assert analysis_main(["race-margins", str(tmp_path / "multirun" / "raced"), "--out", str(tmp_path / "x")]) == 2


def test_a_variant_audited_at_an_earlier_rung_goes_on_to_the_end():
    rule = Rule(top=3, margin=0, keep=0.0, audit=0)
    assert "v9" in decide(TEN, rule, seed=0)["stopped"]
    carried = decide(TEN, rule, seed=0, carried={"v9"})
    assert "v9" in carried["go_on"] and "v9" not in carried["stopped"] + carried["audit"]


@pytest.mark.long
def test_a_variant_whose_training_diverged_is_stopped_as_diverged_and_not_trained_again(tmp_path):
    three = VARIANTS[:3]
    common = ["+experiment=demo", "trainer.max_steps=40", "trainer.val_every=10", "trainer.ckpt_every=10",
              "trainer.n_val=16", "trainer.warmup_steps=0", "eval.n_samples=128", "eval.batch_size=128",
              "eval.weights=[ema]", "eval.settings=[[5,5.0]]", "rung.samples=128", "rung.settings=[[5,5.0]]",
              "name=r", "data=shapes", f"paths.cache={tmp_path}/cache"]
    # the third variant's run diverged before the race (a non-finite loss recorded in its status, as training does)
    bad = run_cli([*common, f"formulation.variant={_escaped(three[2])}", "optimizer.lr=1e30", "trainer.grad_clip=null",
                   f"paths.runs={tmp_path}/multirun"], timeout=300)
    assert bad.returncode == 1 and "failed: training loss is" in bad.stderr, bad.stderr[-2000:]
    race = ["-m", *common, "hydra/sweeper=race", "hydra/launcher=basic", f"paths.sweeps={tmp_path}/multirun",
            "formulation.variant=" + ",".join(_escaped(v) for v in three), "hydra.sweeper.rungs=[0.5]",
            "hydra.sweeper.margins=[0]", "hydra.sweeper.top=1", "hydra.sweeper.keep=0.0", "hydra.sweeper.audit=0",
            "hydra.sweeper.bootstrap=200"]
    r = run_cli(race, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "multirun" / "r"
    rung, end = DecisionLog(sweep).records()
    assert list(rung["diverged"]) == [three[2]] and rung["diverged"][three[2]]["reason"].startswith("NonFiniteLoss")
    assert three[2] not in rung["places"] and three[2] in end["stopped"] and three[2] not in end["finished"]
    assert f"1 diverged ({three[2]})" in r.stdout
    [run] = [sweep / j["run"] for j in json.loads((sweep / "manifest.json").read_text())["jobs"]
             if j["variant"] == three[2]]
    assert runfolder.read_status(run)["state"] == "failed" and not list(run.rglob("*.ckpt"))  # never trained again
    assert "training diverged (NonFiniteLossError" in runfolder.read_outcome(run)["reason"]
    out = tmp_path / "tables"
    assert analysis_main(["rank-table", "--results", str(sweep), "--out", str(out)]) == 0
    assert f"| {three[2]} | diverged at step " in (out / "table1.md").read_text()


def test_a_race_or_rung_without_an_evaluator_is_refused_in_one_line_before_anything_is_written(tmp_path):
    from rfsweep.run.config import validate
    from tests.helpers import compose_cfg, tiny

    with pytest.raises(ConfigError, match=r"rung.stop_at=4 with eval.evaluator=none \(allowed: an evaluator"):
        validate(compose_cfg([*tiny(tmp_path), "rung.stop_at=4"]))
    with pytest.raises(ConfigError, match=r"eval.enabled=true with eval.evaluator=none"):
        validate(compose_cfg([*tiny(tmp_path), "eval.enabled=true"]))
    race = ["+experiment=demo", "hydra/sweeper=race", "-m", "data=shapes", "formulation.variant=rf,eps/linear",
            "hydra.sweeper.margins=[1,1]", f"paths.sweeps={tmp_path}/multirun", f"paths.runs={tmp_path}/runs"]
    for args in ([*race, "eval=none"], [*race, "eval=none", "dry_run=true"], [*race, "eval=embedded,none"]):
        r = run_cli(args, timeout=300)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert r.returncode == 2 and len(errors) == 1 and "hydra/sweeper=race with eval.evaluator=none" in errors[0]
        assert not (tmp_path / "multirun").exists() and not (tmp_path / "runs").exists()


def test_a_decided_rung_with_a_rule_key_this_version_lacks_is_replayed_on_the_keys_both_have(tmp_path):
    from rfsweep.run.race_control import Job, run_race

    jobs = [Job([f"formulation.variant={v}"], v, f"seed0/{v}") for v in "abcd"]
    rec = _decided_rung(jobs)
    rec["rule"]["patience"] = 2  # written by a newer version's rule
    DecisionLog(tmp_path).append(rec)
    launched = []
    assert run_race(conf(rungs=[0.25], margins=[1]), tmp_path, 400, 8, jobs, launched.append) == 1  # runs unfinished
    assert len(launched) == 1 and len(launched[0]) == 4 and not any("rung.stop_at" in " ".join(j) for j in launched[0])
