"""A multirun dry run (`-m dry_run=true`) is printed without Hydra's launcher (`rfsweep.run.sweep.dry_run_sweep`):
each job's config must be the one Hydra's launcher composes for it, and the lines the ones the launcher's jobs print
(the launcher path stays reachable for this comparison: RFSWEEP_DRY_RUN_VIA_LAUNCHER=1)."""

from __future__ import annotations

import copy

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict, read_write

from rfsweep.run.sweep import DRY_RUN_VIA_LAUNCHER, dry_run_configs, planned_jobs
from tests.helpers import CONF, run_cli


def _paths(tmp) -> list[str]:
    return [f"paths.runs={tmp}/runs", f"paths.sweeps={tmp}/multirun", f"paths.cache={tmp}/cache"]


def test_every_job_of_the_formulation_grid_composes_as_hydra_composes_it(tmp_path):
    overrides = ["+experiment=formulation_grid", "dry_run=true", "seed=3", *_paths(tmp_path)]
    with initialize_config_dir(config_dir=CONF, version_base="1.3", job_name="__main__"):
        master, jobs = dry_run_configs(overrides)
        assert [o for o, _ in jobs] == planned_jobs(master) and len(jobs) == 122
        loader = GlobalHydra.instance().config_loader()
        hydra_cfg = copy.deepcopy(master)
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.hydra.runtime.output_dir = str(tmp_path / "run")  # run_dir: ${hydra:runtime.output_dir}
        HydraConfig.instance().set_config(hydra_cfg)
        for job, fast in jobs:
            slow = loader.load_sweep_config(master, job)  # what Hydra's launcher composes for the job
            with open_dict(slow):
                del slow["hydra"]
            assert OmegaConf.to_container(fast, resolve=False) == OmegaConf.to_container(slow, resolve=False), job
            assert OmegaConf.to_container(fast, resolve=True) == OmegaConf.to_container(slow, resolve=True), job
            assert OmegaConf.is_struct(fast) == OmegaConf.is_struct(slow)
    assert {str(c.data.label) for _, c in jobs} == {"imagenet", "cc12m"}
    assert len({str(c.formulation.variant) for _, c in jobs}) == 61 and all(int(c.seed) == 3 for _, c in jobs)


def _both_ways(args: list[str], tmp_path, monkeypatch) -> tuple:
    """The command's result by the fast path, then through Hydra's launcher (run_cli passes the environment on)."""
    fast = run_cli([*args, *_paths(tmp_path / "fast")], timeout=300)
    with monkeypatch.context() as m:
        m.setenv(DRY_RUN_VIA_LAUNCHER, "1")
        slow = run_cli([*args, *_paths(tmp_path / "slow")], timeout=300)
    return fast, slow


def _lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(("dry-run: ", "warning: ", "error: "))]


def test_the_fast_dry_run_prints_what_the_launchers_jobs_print_and_writes_nothing(tmp_path, monkeypatch):
    # the basic launcher runs the jobs in order, in-process: the same order as the fast path
    demo = ["+experiment=demo", "hydra/launcher=basic", "hydra/sweeper=basic", "-m", "dry_run=true",
            'formulation.variant=rf,"rf/cosmap"', "data=shapes,colour_digits", "trainer.shift=3"]
    grid = ["+experiment=formulation_grid", "hydra/launcher=basic", "hydra/sweeper=basic", "-m", "dry_run=true",
            "formulation.variant=rf,eps/linear", "data=imagenet", "trainer.devices=4"]  # data.path unset: a plan
    for args in (demo, grid):
        fast, slow = _both_ways(args, tmp_path, monkeypatch)
        assert fast.returncode == slow.returncode == 0, (fast.stderr[-2000:], slow.stderr[-2000:])
        assert _lines(fast.stdout) == _lines(slow.stdout) and len(_lines(fast.stdout)) >= 2
        assert _lines(fast.stderr) == _lines(slow.stderr) and not any(ln.startswith("error") for ln in _lines(
            fast.stderr))
        assert "[HYDRA] Launching" in slow.stdout + slow.stderr and "[HYDRA]" not in fast.stdout + fast.stderr
    assert not (tmp_path / "fast").exists()  # nothing written: no sweep folder, multirun.yaml or run folder
    assert list((tmp_path / "slow").rglob("multirun.yaml"))  # the launcher writes its sweep folder


@pytest.mark.parametrize("bad, says", [
    ('formulation.variant=rf,"edm/rf",bogus', "unknown formulation 'bogus'"),
    ("trainer.max_steps=100,-5", "trainer.max_steps=-5 is out of range"),
    ("optimizer.lr=1e-4,3e-4", "share the run folder"),  # a swept key the run folder does not show
])
def test_a_dry_run_with_a_job_the_sweep_would_refuse_exits_2_in_one_line_and_plans_nothing(tmp_path, monkeypatch,
                                                                                           bad, says):
    fast, slow = _both_ways(["+experiment=demo", "hydra/launcher=basic", "-m", "dry_run=true", "data=shapes", bad],
                            tmp_path, monkeypatch)
    for r in (fast, slow):  # as the sweep itself refuses it, before any job starts
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert r.returncode == 2 and len(errors) == 1 and says in errors[0] and "no job started" in errors[0]
        assert "dry-run: " not in r.stdout
    single = run_cli(["+experiment=demo", "dry_run=true", "trainer.max_steps=-5", *_paths(tmp_path / "one")])
    assert single.returncode == 2 and single.stderr.strip().splitlines()[-1] == (
        "error: config error: trainer.max_steps=-5 is out of range (allowed: an integer > 0)")
    assert "dry-run: " not in single.stdout


def test_a_bad_override_is_reported_by_hydra_as_before(tmp_path, monkeypatch):
    fast, slow = _both_ways(["+experiment=demo", "-m", "dry_run=true", "formulation.varient=rf"], tmp_path,
                            monkeypatch)
    assert fast.returncode == slow.returncode != 0
    assert fast.stderr == slow.stderr and "formulation.varient" in fast.stderr


def test_a_sweeps_jobs_count_each_backbone_once(tmp_path):
    """job_flops caches what depends on the backbone and its input shapes alone: the demo's 122 jobs (one backbone,
    two data sets of one shape) count once, and the cached numbers are those of an uncached count."""
    from rfsweep.run import plan

    with initialize_config_dir(config_dir=CONF, version_base="1.3", job_name="__main__"):
        _, jobs = dry_run_configs(["+experiment=demo", "dry_run=true", *_paths(tmp_path)])
    plan._backbone_flops.cache_clear()
    flops = [plan.job_flops(cfg) for _, cfg in jobs]
    shapes = {(plan.latent_shape(cfg), plan.context_len(cfg)) for _, cfg in jobs}
    assert plan._backbone_flops.cache_info().misses == len(shapes) == 1 and len(flops) == 122
    for (_, cfg), f in list(zip(jobs, flops))[:2]:
        plan._backbone_flops.cache_clear()
        assert plan.job_flops(cfg) == f


@pytest.mark.parametrize("args, fast", [
    (["-m", "dry_run=true"], True), (["+experiment=demo", "--multirun", "dry_run=True"], True),
    (["dry_run=true"], False), (["-m", "dry_run=false"], False), (["-m", "dry_run=true,false"], False),
    (["-m", "dry_run=true", "--cfg", "job"], False), (["-m", "dry_run=true", "dry_run=false"], False),
    (["-m", "dry_run=true", "bad=[unclosed"], False),
])
def test_which_commands_take_the_fast_dry_run(args, fast, monkeypatch):
    from rfsweep.cli.main import wants_fast_dry_run

    assert wants_fast_dry_run(args) is fast
    monkeypatch.setenv(DRY_RUN_VIA_LAUNCHER, "1")
    assert wants_fast_dry_run(args) is False


def test_a_dry_run_through_the_slurm_launcher_prints_here_and_submits_nothing(tmp_path, monkeypatch):
    """Whatever the launcher, a dry run launches no job: with `hydra/launcher=slurm` (the README's cluster command)
    the lines are printed here and nothing is written (a submission through submitit writes its job folder and the
    sweep's multirun.yaml under the sweep folder before it calls sbatch)."""
    r = run_cli(["+experiment=demo", "-m", "dry_run=true", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                 "formulation.variant=rf,eps/linear", "data=shapes", *_paths(tmp_path / "out")], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len([ln for ln in _lines(r.stdout) if ln.startswith("dry-run: ")]) == 2
    assert not (tmp_path / "out").exists()
