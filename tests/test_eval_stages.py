"""Evaluation at scale: results written per setting (a stop keeps the finished ones; the rerun evaluates only the
rest and ends where an uninterrupted evaluation ends), evaluation as its own job (stage=train, then stage=evaluate)."""

from __future__ import annotations

import pandas as pd
import pytest

from rfsweep.cluster.signals import PreemptionGuard
from rfsweep.evaluation.protocol import EvaluationStopped
from rfsweep.results import read_results
from rfsweep.run.builders import build_module
from rfsweep.run.eval_stage import configured_evaluator, evaluate_run
from rfsweep.run.fit import fit
from rfsweep.runfolder import read_status
from rfsweep.train.checkpoint_io import load_weights
from tests.helpers import compose_cfg, run_cli, tiny

EVAL = ["eval=embedded", "eval.n_samples=16", "eval.batch_size=16", "eval.weights=[ema,raw]",
        "eval.settings=[[2,1.0],[3,5.0]]"]


def _trained(tmp_path):
    cfg = compose_cfg([*tiny(tmp_path, 4), *EVAL], run_dir=str(tmp_path / "run"))
    module, data = build_module(cfg)
    fit(cfg, module, data, tmp_path / "run", PreemptionGuard())
    info = load_weights(module, tmp_path / "run")
    return cfg, module, info, [(int(s), float(c)) for s, c in cfg.eval.settings]


def test_a_stopped_evaluation_keeps_finished_settings_and_resumes(tmp_path, capsys):
    cfg, module, info, settings = _trained(tmp_path / "a")
    run = tmp_path / "a" / "run"
    full = pd.DataFrame(evaluate_run(cfg, module, run, info, settings, configured_evaluator(cfg)))
    (run / "results.csv").unlink()
    asked = []  # one batch per setting: the stop comes before the second setting's batch
    with pytest.raises(EvaluationStopped):
        evaluate_run(cfg, module, run, info, settings, configured_evaluator(cfg),
                     stop=lambda: len(asked.append(1) or asked) > 1)
    kept = read_results(run / "results.csv")
    assert len(kept) == 2 and set(kept["weights"]) == {"ema", "real"}  # the first setting and the real images
    calls = []
    evaluator = configured_evaluator(cfg)
    encode = evaluator.encode_images
    evaluator.encode_images = lambda x: calls.append(len(x)) or encode(x)
    capsys.readouterr()
    evaluate_run(cfg, module, run, info, settings, evaluator)
    assert len(calls) == 3  # only the three settings left were sampled
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval ")]
    assert [line.split(":")[0] for line in said[::2]] == ["eval 1/3 ema 3 steps cfg 5", "eval 2/3 raw 2 steps cfg 1",
                                                        "eval 3/3 raw 3 steps cfg 5"]
    assert "done in" in said[1] and "ETA" in said[1] and said[-1].endswith("(all settings done)")
    done = read_results(run / "results.csv")
    cols = ["weights", "steps", "cfg", "clip_score", "fid"]
    key = ["weights", "steps", "cfg"]
    pd.testing.assert_frame_equal(done[cols].sort_values(key).reset_index(drop=True),
                                  full[cols].sort_values(key).reset_index(drop=True), check_dtype=False)


def test_a_stop_between_batches_drops_the_setting_under_way(tmp_path):
    """The stop is asked before every batch, the first setting's too: at the paper's protocol one setting can outlast
    the time between SLURM's signal and its kill."""
    cfg, module, info, settings = _trained(tmp_path / "b")
    run = tmp_path / "b" / "run"
    sampled = []
    generate = module.generate
    module.generate = lambda *a, **k: sampled.append(1) or generate(*a, **k)
    with pytest.raises(EvaluationStopped):  # before any sample
        evaluate_run(cfg, module, run, info, settings, configured_evaluator(cfg), stop=lambda: True)
    assert not sampled
    cfg.eval.batch_size = 8  # two batches per setting; stopped after the first batch of the first setting
    with pytest.raises(EvaluationStopped):
        evaluate_run(cfg, module, run, info, settings, configured_evaluator(cfg), stop=lambda: len(sampled) >= 1)
    assert len(sampled) == 1 and not (run / "results.csv").exists()  # nothing of the setting under way is kept


def test_a_folder_taken_over_while_evaluating_gets_no_more_writes(tmp_path):
    """The run folder's write fence is asked before each write: once the lease says no, the setting just computed is
    neither banked nor kept."""
    from rfsweep.fence import Fence, LeaseLost, fenced

    cfg, module, info, settings = _trained(tmp_path / "c")
    run = tmp_path / "c" / "run"
    asked = []
    lease = type("TakenLease", (), {"confirm": lambda self: asked.append(1) or False})()
    with pytest.raises(LeaseLost, match="taken over"), fenced(Fence(run, lease)):
        evaluate_run(cfg, module, run, info, settings, configured_evaluator(cfg))
    assert len(asked) == 1 and not (run / "results.csv").exists() and not (run / "evidence.safetensors").exists()


@pytest.mark.long
def test_evaluation_is_its_own_job(tmp_path):
    args = [*tiny(tmp_path, 4), *EVAL]
    r = run_cli([*args, "stage=evaluate"])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "not trained" in errors[0], r.stderr[-2000:]
    r = run_cli([*args, "stage=train"])
    assert r.returncode == 0, r.stderr[-2000:]
    run = next((tmp_path / "runs").rglob("status.json")).parent
    assert read_status(run)["state"] == "trained" and not (run / "results.csv").exists()
    assert "skip:" in run_cli([*args, "stage=train"]).stdout  # trained is finished for stage=train
    r = run_cli([*args, "stage=evaluate"])
    assert r.returncode == 0 and read_status(run)["state"] == "done", r.stderr[-2000:]
    assert len(read_results(run / "results.csv")) == 5
    said = [line for line in r.stdout.splitlines() if line.startswith("eval ")]  # the console follows evaluation
    assert len(said) == 8  # a line as each of the four settings starts and one as it ends
    assert said[0].startswith("eval 1/4 ema 2 steps cfg 1: sampling") and said[-1].endswith("(all settings done)")


def test_an_evaluator_without_weights_fails_before_training(tmp_path):
    r = run_cli([*tiny(tmp_path, 300), "eval=clip_l14"])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "ViT-L-14" in errors[0], r.stderr[-2000:]
    assert not list((tmp_path / "runs").rglob("*.ckpt")) and not list((tmp_path / "runs").rglob("status.json"))


def _other_evaluator(tmp_path):
    """The shipped embedded CLIP with one weight nudged: another evaluator (another id) of the same shape."""
    import shutil

    from safetensors.torch import load_file, save_file

    from rfsweep.evaluation.evaluators import EMBEDDED_WEIGHTS

    state = load_file(str(EMBEDDED_WEIGHTS))
    name = next(iter(state))
    state[name] = (state[name].float() + 1e-2).to(state[name].dtype)
    out = tmp_path / "other_clip.safetensors"
    save_file(state, str(out))
    shutil.copy(EMBEDDED_WEIGHTS.with_suffix(".json"), out.with_suffix(".json"))
    return out


@pytest.mark.long
def test_results_of_another_evaluator_are_evaluated_again_not_trained_again(tmp_path):
    from analysis.collect import collect
    from rfsweep.evaluation.evaluators import embedded_id
    from rfsweep.results import ResultsError, write_results

    args = [*tiny(tmp_path, 4), *EVAL]
    assert run_cli(args).returncode == 0
    run = next((tmp_path / "runs").rglob("status.json")).parent
    first = read_results(run / "results.csv")
    assert set(first["evaluator"]) == {embedded_id()}
    ckpts = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    r = run_cli(args)
    assert r.returncode == 0 and "skip:" in r.stdout  # the same evaluator: finished
    other = _other_evaluator(tmp_path)
    r = run_cli([*args, f"+eval.evaluator_args.weights={other}"])
    assert r.returncode == 0 and "skip:" not in r.stdout, r.stderr[-2000:]
    again = read_results(run / "results.csv")
    assert set(again["evaluator"]) == {embedded_id(other)} and len(again) == len(first)  # every row evaluated again
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts  # not trained again
    # a sweep whose runs were evaluated by two evaluators is refused by the analysis, in one line
    write_results(tmp_path / "sweep" / "a" / "results.csv", first)
    write_results(tmp_path / "sweep" / "b" / "results.csv", again.assign(seed=1))
    with pytest.raises(ResultsError, match="2 evaluators"):
        collect(tmp_path / "sweep")
