"""The formulation grid as a Hydra multirun: 122 jobs, dry run, manifest, evaluation rows, skip on rerun."""

import json

import pandas as pd
import pytest

from analysis.__main__ import main as analysis_main
from rfsweep.formulations import ALL_VARIANTS
from rfsweep.results import EVALUATOR, SETTINGS, columns
from tests.helpers import run_cli, tiny


@pytest.mark.long
def test_formulation_grid_dry_run_lists_122_jobs(tmp_path):
    r = run_cli(["+experiment=formulation_grid", "-m", "dry_run=true", f"paths.sweeps={tmp_path}"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("dry-run: ")]
    assert len(lines) == 122 == len(set(lines))
    heads = {ln.split(" backbone=")[0] for ln in lines}
    assert heads == {f"dry-run: variant={v} dataset={d}" for v in ALL_VARIANTS for d in ("imagenet", "cc12m")}
    assert all("gpu_hours=" in ln and "params=2025.8M" in ln and "GB per GPU" in ln for ln in lines)  # each job's cost
    assert not any(tmp_path.iterdir())  # nothing written: no sweep folder, multirun.yaml, manifest or run folder


def test_small_sweep_evaluates_writes_manifest_and_skips_on_rerun(tmp_path):
    args = [*tiny(tmp_path, steps=6), "-m", "eval=embedded", "eval.n_samples=16", "eval.batch_size=16",
            "eval.weights=[ema]", "eval.settings=[[5,5.0],[25,5.0]]", 'formulation.variant=rf,"edm/rf"', "name=grid"]
    r = run_cli(args, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "multirun" / "grid"
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert [j["variant"] for j in manifest["jobs"]] == ["rf", "edm/rf"]
    assert manifest["settings"] == [[5, 5.0], [25, 5.0]] and manifest["weights"] == ["ema"]
    assert manifest["ema_lengths"] == []  # eval.ema_lengths: the post-hoc lengths `rank-table --ema best` expects
    files = sorted(sweep.rglob("results.csv"))
    assert len(files) == 2
    df = pd.read_csv(files[0])
    assert list(df.columns) == [*columns(), EVALUATOR]  # the schema, then the evaluator that computed the rows
    assert set(zip(df.weights, df.steps, df.cfg)) == {("ema", 5, 5.0), ("ema", 25, 5.0), ("real", 0, 0.0)}
    assert df.fid.ge(0).all() and df.clip_score.between(-1, 1).all() and (df.n_samples == 16).all()
    stamp = [f.stat().st_mtime_ns for f in files]
    r2 = run_cli(args, timeout=600)
    assert r2.returncode == 0 and r2.stdout.count("skip:") == 2, r2.stdout[-2000:]
    assert [f.stat().st_mtime_ns for f in files] == stamp  # finished work is not redone
    out = tmp_path / "tables"
    assert analysis_main(["rank-table", "--results", str(sweep), "--out", str(out), "--bootstrap", "200"]) == 0
    assert (out / "table1.csv").is_file() and (out / "table2.csv").is_file()
    assert set(SETTINGS) >= {(5, 5.0), (25, 5.0)}
    t1 = pd.read_csv(out / "table1.csv")  # every run has its evidence bank: Table 1 says how sure it is
    assert {"rank", "rank_lo", "rank_hi", "p_rank1", "p_top5", "sim_lo", "sim_hi", "best"} <= set(t1.columns)
    assert t1["p_rank1"].sum() >= 1 - 1e-9 and (t1["rank_lo"] <= t1["rank"]).all() and t1["best"].any()
    assert "rank [95%]" in (out / "table1.md").read_text() and (out / "pairwise.csv").is_file()


def test_sweep_through_submitit_as_on_slurm(tmp_path):
    """The SLURM path without SLURM: hydra-submitit-launcher's local executor pickles each job the way
    `hydra/launcher=slurm` does, runs it in its own process; the manifest, the runs and their status land."""
    from hydra import compose, initialize_config_dir

    from analysis.status import sweep_status
    from tests.helpers import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        slurm = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.qos=high",
                                             "hydra.launcher.account=lab"], return_hydra_config=True)
    launcher = slurm.hydra.launcher  # the cluster config composes with the plugin's schema, with rfsweep's launcher
    assert launcher._target_.endswith("RfsweepSlurmLauncher") and launcher.qos == "high" and launcher.nodes == 1
    assert slurm.cluster.requeue is True and launcher.max_num_timeout == 20
    r = run_cli([*tiny(tmp_path, steps=4), "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                 "seed=0,1", "name=sub"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    status = sweep_status(tmp_path / "multirun" / "sub")
    assert list(status["state"]) == ["done", "done"] and len(status) == 2
