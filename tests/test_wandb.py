"""W&B as it is written: the offline run files of real sweeps, read back (tests/wandb_files.py), not mocks of
wandb.init. One run per job under the in-process and the joblib launcher, the grouping keys, summaries, tables,
images and the checkpoint reference; a failed job's run marked failed; an evaluation-only rerun on the same run id;
the analysis run of rank-table; the report built as code; `wandb sync` over a sweep; a console a person can read."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from analysis.__main__ import main as analysis_main
from rfsweep.results import columns
from rfsweep.runfolder import read_status, write_status
from rfsweep.wandb_env import has_credentials, run_id, wandb_mode
from tests.helpers import run_cli, tiny
from tests.wandb_files import offline_runs, read_run

EVAL = ["eval=embedded", "eval.n_samples=16", "eval.batch_size=16", "eval.weights=[ema]",
        "eval.settings=[[5,5.0],[25,1.0]]"]


def _wandb(tmp_path) -> list[str]:
    return [o for o in tiny(tmp_path, steps=8) if o not in ("logger=csv", "eval=none")] + ["logger=default"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two jobs of a formulation sweep in one process (the launcher that used to put both in the first W&B run)."""
    tmp = tmp_path_factory.mktemp("wb")
    r = run_cli([*_wandb(tmp), *EVAL, "-m", 'formulation.variant=rf,"edm/rf"', "name=wbgrid"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "multirun" / "wbgrid", r


def test_one_wandb_run_per_job_with_grouping_keys_summaries_and_tables(sweep):
    root, _ = sweep
    jobs = sorted(p.parent for p in root.rglob("status.json"))
    assert len(jobs) == 2
    for job in jobs:
        (folder,) = offline_runs(job)  # its own offline run, in its own folder
        run = read_run(folder)
        assert run.id == run_id(job) and run.group == "wbgrid" and run.job_type == "train" and run.exit_code == 0
        cfg = {k: v for k, v in run.config.items() if k in ("variant", "family", "dataset", "backbone", "seed",
                                                             "experiment")}
        status = json.loads((job / "config.json").read_text())
        assert cfg["experiment"] == "wbgrid" and cfg["dataset"] == "shapes" and cfg["backbone"] == "mmdit"
        assert cfg["variant"] in ("rf", "edm/rf") and cfg["family"] in ("rf", "edm") and cfg["seed"] == 0
        assert run.config["params"] > 0 and run.config["depth"] == 1 and run.config["run"]["seed"] == status["seed"]
        s = run.summary
        vals = [h["val/loss_ema"] for h in run.history if "val/loss_ema" in h]
        assert s["val/loss_ema"]["min"] == pytest.approx(min(vals)) == pytest.approx(s["best/val_loss_ema"])
        assert s["best/step"] in (4, 8) and s["rfsweep/outcome"] == "done"
        assert any("lr-AdamW" in h for h in run.history) and any("perf/samples_per_s" in h for h in run.history)
        assert any("val_t/ema_t0" in h for h in run.history) and any("val_t/raw_t7" in h for h in run.history)
        for setting in ("ema_steps5_cfg5", "ema_steps25_cfg1"):
            assert 0 < s[f"eval/{setting}/fid"] and -1 <= s[f"eval/{setting}/clip_score"] <= 1
            assert s[f"samples/{setting}/caption"].count(" | ") >= 15  # the prompts of the grid
        table = json.loads((folder / "files" / s["eval/results/path"]).read_text())
        assert table["columns"] == list(columns()) and len(table["data"]) == 3  # two settings and the real images
        weighting = json.loads((folder / "files" / s["formulation/weighting/path"]).read_text())
        assert weighting["columns"][:4] == ["lambda", "density_lambda", "loss_weight", "effective"]
        assert len(weighting["data"]) == 40 and all(row[3] >= 0 for row in weighting["data"])
        assert s["formulation/effective_weight_table/nrows"] == 40  # the line plot's own table
        (ref,) = [a for a in run.artifacts if a.type == "model"]
        assert [c.ref for c in ref.manifest.contents] == [(job / "checkpoints" / "best.safetensors").resolve().as_uri()]


@pytest.mark.long
def test_joblib_workers_open_one_run_per_job(tmp_path):
    r = run_cli([*_wandb(tmp_path), "-m", "seed=0,1,2", "name=wbjob", "hydra/launcher=local2"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p.parent for p in (tmp_path / "multirun").rglob("status.json"))
    runs = [read_run(f) for job in jobs for f in offline_runs(job)]
    assert len(jobs) == 3 == len(runs) == len({r.id for r in runs}) and {r.exit_code for r in runs} == {0}
    assert sorted(r.config["seed"] for r in runs) == [0, 1, 2]


def test_a_failed_job_is_marked_failed_with_its_reason(tmp_path):
    r = run_cli([*_wandb(tmp_path), "optimizer.lr=1e30", "trainer.grad_clip=null", "trainer.warmup_steps=1"])
    assert r.returncode == 1
    (folder,) = offline_runs(tmp_path / "runs")
    run = read_run(folder)
    assert run.exit_code == 1 and run.summary["rfsweep/outcome"] == "failed"
    assert run.summary["rfsweep/reason"].startswith("NonFiniteLossError: training loss is")


def test_an_evaluation_only_rerun_logs_to_the_same_run(tmp_path):
    args = [*_wandb(tmp_path), *EVAL]
    assert run_cli(args).returncode == 0
    job = next((tmp_path / "runs").rglob("status.json")).parent
    (job / "results.csv").unlink()
    write_status(job, "trained", step=8)
    r = run_cli(args)
    assert r.returncode == 0 and read_status(job)["state"] == "done", r.stderr[-2000:]
    first, second = (read_run(f) for f in offline_runs(job))
    assert first.id == second.id == run_id(job)  # one W&B run once synced
    assert (first.job_type, second.job_type) == ("train", "evaluate")
    assert "eval/ema_steps5_cfg5/fid" in second.summary and not any("train/loss" in h for h in second.history)


def test_rank_table_logs_the_analysis_run(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "tables"
    assert analysis_main(["rank-table", "--results", str(root), "--out", str(out), "--wandb"]) == 0
    (folder,) = offline_runs(out)
    run = read_run(folder)
    assert run.job_type == "analysis" and run.group == "wbgrid" and run.config["complete"] is True
    s = run.summary
    table1 = json.loads((folder / "files" / s["study/table1/path"]).read_text())
    assert table1["columns"] == [  # with the intervals and sets of the banks (the fixture has no 50-step setting)
        "variant", "all", "5 steps", "50 steps", "rank", "rank_lo", "rank_hi", "sim_lo", "sim_hi", "best", "p_rank1",
        "p_top5", "5 steps rank", "5 steps rank_lo", "5 steps rank_hi", "5 steps sim_lo", "5 steps sim_hi",
        "5 steps best"] and len(table1["data"]) == 2
    assert s["study/results/nrows"] == 6 and s["study/missing/nrows"] == 0 and s["study/missing_count"] == 0
    assert s["study/fig3/_type"] == "image-file" and s["study/fig4/_type"] == "image-file"


def test_sync_uploads_every_offline_run_of_a_sweep(sweep, capfd):
    root, _ = sweep
    assert analysis_main(["wandb-sync", str(root), "--dry-run"]) == 0  # wandb's own CLI, without a server
    out, err = capfd.readouterr()
    assert "2 offline runs" in out and "Would sync 2 run(s)" in out + err


def test_report_as_code_has_the_study_panels():
    import wandb_workspaces.reports.v2 as wr

    from analysis.wandb_study import build_report, ranking_settings
    from rfsweep.results import SETTINGS

    settings = ranking_settings({"weights": ["ema", "raw"], "settings": [list(s) for s in SETTINGS]})
    assert len(settings) == 12
    report = build_report("lab", "rfsweep", "formulation_grid", ["imagenet", "cc12m"], settings)
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    scatter = [p for g in grids for p in g.panels if isinstance(p, wr.ScatterPlot)]
    assert len(scatter) == 24  # 2 datasets x 6 sampler settings x {EMA, raw}: the 24 ranking settings
    model = scatter[0]._to_model().model_dump(by_alias=True, exclude_none=True)["config"]
    assert model["xAxis"] == "summary:eval/ema_steps50_cfg1/fid"
    assert model["yAxis"] == "summary:eval/ema_steps50_cfg1/clip_score"
    assert grids[0].runsets[0].filters == ("Config('experiment') = 'formulation_grid' and "
                                           "Config('dataset') = 'imagenet'")
    assert grids[0].runsets[0].groupby == ["config.family"] and len(grids[0].custom_run_colors) == 4
    lines = [p for g in grids for p in g.panels if isinstance(p, wr.LinePlot)]
    line = lines[0]._to_model().model_dump(by_alias=True, exclude_none=True)["config"]
    assert line["metrics"] == ["val/loss_ema"] and line["groupBy"] == "family.value"
    tables = [p.table_name for g in grids for p in g.panels if isinstance(p, wr.WeavePanelSummaryTable)]
    assert tables == ["study/table1", "study/table2", "study/missing"]
    media = [k for g in grids for p in g.panels if isinstance(p, wr.MediaBrowser) for k in p.media_keys]
    assert "samples/grid" in media and "samples/ema_steps25_cfg5" in media and "study/fig3" in media


def test_credentials_of_any_server_count(tmp_path):
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine wandb.lab.example login user password secret\n")
    os.chmod(netrc, 0o600)
    env = {"HOME": str(tmp_path)}
    assert not has_credentials(env) and wandb_mode(env) == "offline"  # the entry is not the public server's
    assert has_credentials({**env, "WANDB_BASE_URL": "https://wandb.lab.example"})
    assert wandb_mode({**env, "WANDB_BASE_URL": "https://wandb.lab.example"}) == "online"
    assert has_credentials({"HOME": str(tmp_path), "WANDB_API_KEY": "k"})
    assert wandb_mode({**env, "WANDB_MODE": "offline", "WANDB_API_KEY": "k"}) == "offline"


def test_console_prints_each_event_once_without_tips(sweep):
    root, r = sweep
    said = r.stdout + r.stderr
    for noise in ("Tip:", "Epoch 0/-2", "anonymous", "LeafSpec", "Loading weights", "srun"):
        assert noise not in said, noise
    lines = [ln for ln in said.splitlines() if "Trainer.fit` stopped" in ln]
    assert len(lines) == 2  # once per job, not twice (raw and with a timestamp)
    assert "step 8/8 (100%)" in said  # the progress line of a job writing to a file
    job = next(root.rglob("samples.png")).parent
    w, h = Image.open(job / "samples.png").size
    assert w >= 4 * 64 and h >= 64  # sampler.n_grid=4 samples of 8x8 pixels, each shown at 64 px or more
    assert len((job / "samples.txt").read_text().splitlines()) == 4
