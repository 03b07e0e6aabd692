"""One SLURM task per rank: a sweep whose SLURM launcher would start a job with another number of tasks than its
ranks (`hydra.launcher.tasks_per_node` x `nodes` against `trainer.devices` x `trainer.num_nodes`) stops before any
submission, and a job inside a SLURM allocation of another number of tasks (SLURM_NTASKS) stops before it builds
anything: one line naming both keys. Lightning alone refuses only inside the allocation, after the queue."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from rfsweep.errors import ConfigError
from rfsweep.run.preflight import check_allocation, check_launcher_tasks, preflight
from tests.helpers import CONF, compose_cfg, run_cli, tiny


def _sweep(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_the_slurm_launchers_tasks_must_be_the_jobs_ranks():
    eight = _sweep(["hydra/launcher=slurm", "trainer.devices=8"])  # the launcher's default: one task per node
    with pytest.raises(ConfigError) as e:
        check_launcher_tasks(eight, eight.hydra.launcher)
    msg = str(e.value)
    assert "hydra.launcher.tasks_per_node=1" in msg and "hydra.launcher.nodes=1" in msg and "\n" not in msg
    assert "trainer.devices=8" in msg and "trainer.num_nodes=1" in msg and "tasks_per_node=8" in msg  # the fix
    ok = _sweep(["hydra/launcher=slurm", "trainer.devices=8", "hydra.launcher.tasks_per_node=8"])
    check_launcher_tasks(ok, ok.hydra.launcher)
    two_nodes = _sweep(["hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2",
                        "hydra.launcher.tasks_per_node=4", "hydra.launcher.nodes=2"])
    check_launcher_tasks(two_nodes, two_nodes.hydra.launcher)
    with pytest.raises(ConfigError, match="hydra.launcher.nodes=1"):  # nodes forgotten: 4 tasks for 8 ranks
        bad = _sweep(["hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2",
                      "hydra.launcher.tasks_per_node=4"])
        check_launcher_tasks(bad, bad.hydra.launcher)
    basic = _sweep(["trainer.devices=2"])  # not SLURM: Lightning starts the ranks itself
    check_launcher_tasks(basic, basic.hydra.launcher)


def test_the_slurm_launcher_stops_before_it_submits_anything(capsys):
    from hydra_plugins.rfsweep_launcher.slurm_launcher import refuse_tasks

    cfg = _sweep(["hydra/launcher=slurm", "trainer.devices=2"])
    with pytest.raises(SystemExit) as e:
        refuse_tasks(cfg, ["trainer.devices=2", "seed=0"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: sweep job [trainer.devices=2 seed=0]: config error: ")
    assert "hydra.launcher.tasks_per_node=1" in err and "trainer.devices=2" in err and "\n" not in err


@pytest.mark.parametrize("env,devices,nodes,ok", [
    ({}, 8, 1, True),  # not in SLURM
    ({"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train"}, 1, 1, True),  # a one-task job of one device: normal
    ({"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "train"}, 8, 1, True),
    ({"SLURM_NTASKS": "16", "SLURM_JOB_NAME": "train"}, 8, 2, True),
    ({"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train"}, 8, 1, False),  # 8 ranks, one task
    ({"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "train"}, 1, 1, False),  # 8 tasks, each a whole run
    ({"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "interactive"}, 2, 1, True),  # salloc: Lightning starts the ranks
    ({"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "bash"}, 2, 1, True),
])
def test_inside_a_slurm_job_its_tasks_must_be_the_ranks(env, devices, nodes, ok):
    cfg = compose_cfg([f"trainer.devices={devices}", f"trainer.num_nodes={nodes}"])
    if ok:
        check_allocation(cfg, env)
        return
    with pytest.raises(ConfigError) as e:
        check_allocation(cfg, env)
    msg = str(e.value)
    assert f"SLURM_NTASKS={env['SLURM_NTASKS']}" in msg and f"trainer.devices={devices}" in msg and "\n" not in msg


def test_the_jobs_preflight_checks_its_allocation_and_a_sweeps_does_not(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    cfg = compose_cfg(["trainer.devices=2"])
    with pytest.raises(ConfigError, match="SLURM_NTASKS=1"):
        preflight(cfg)  # the job: before anything is built
    preflight(cfg, data=False)  # a sweep's planned job, checked where the sweep is launched (maybe inside an sbatch)


def test_a_sweep_with_too_few_tasks_stops_before_any_job(tmp_path):
    r = run_cli([*tiny(tmp_path), "-m", "seed=0,1", "hydra/launcher=slurm", "trainer.devices=2"])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-3000:]
    assert "hydra.launcher.tasks_per_node=1" in errors[0] and "trainer.devices=2" in errors[0]
    assert "Submitting" not in r.stdout + r.stderr and not list(tmp_path.rglob("status.json"))
