"""The README stays short and true: at most 200 lines, every command in its bash blocks names a real entry point,
target, option and config, and the commands that finish in seconds run as written.

Every command line of a ```bash block must match one of the kinds below, so a new command cannot slip in untested:
- `make T`: T is a Makefile target;
- `python -m rfsweep ...` (one run, or a multirun with `-m`): composes with its overrides (Hydra's own compose, the
  launcher's config included) and passes the preflight a job runs before any compute; a multirun dry run runs as
  written (its sweep folder under a temporary path);
- `python -m analysis CMD ...`, `python -m rfsweep.cli.generate ...`: their own argparse parsers accept the line;
- `python examples/...`: the file exists and its `--help` lists each option the line uses (tests/test_examples.py
  runs it).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rfsweep.run.preflight import preflight
from rfsweep.run.sweep import planned_jobs
from tests.helpers import CONF, ROOT, _env

README = ROOT / "README.md"


def commands() -> list[list[str]]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                out.append(argv)
    return out


def of_kind(prefix: list[str]) -> list[list[str]]:
    return [a for a in commands() if a[: len(prefix)] == prefix]


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_every_command_is_of_a_tested_kind():
    kinds = (["make"], ["python", "-m", "rfsweep"], ["python", "-m", "analysis"],
             ["python", "-m", "rfsweep.cli.generate"])
    for argv in commands():
        assert any(argv[: len(k)] == k for k in kinds) or argv[:2] == ["python", argv[1]] and argv[1].startswith(
            "examples/"), f"README command of no tested kind: {shlex.join(argv)}"


def test_make_targets_exist():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    for argv in of_kind(["make"]):
        assert argv[1] in targets, shlex.join(argv)


def _overrides(argv: list[str]) -> tuple[list[str], bool]:
    rest = argv[3:]
    return [a for a in rest if a not in ("-m", "--multirun")], any(a in ("-m", "--multirun") for a in rest)


def test_rfsweep_commands_compose_and_pass_preflight(tmp_path, monkeypatch):
    """As `python -m rfsweep` checks them: a run before its first step, a sweep every planned job before any starts
    (here its first and last job, expanded by the sweep's own `planned_jobs`; the grid's data folders named by the
    environment variables the cluster user sets)."""
    for var in ("RFSWEEP_IMAGENET", "RFSWEEP_CC12M"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    lines = of_kind(["python", "-m", "rfsweep"])
    assert len(lines) >= 5
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for argv in lines:
            overrides, multirun = _overrides(argv)
            jobs, launcher = [overrides], None
            if multirun:
                hcfg = compose("config", overrides=overrides, return_hydra_config=True)  # launcher keys compose
                jobs, launcher = planned_jobs(hcfg), hcfg.hydra.launcher  # its tasks and node memory, as a sweep's
                jobs = [jobs[0], jobs[-1]]
            for job in jobs:
                preflight(compose("config", overrides=[*job, f"run_dir={tmp_path}/run"]), data=not multirun,
                          mem_gb=launcher.get("mem_gb") if launcher else None, launcher=launcher)


@pytest.mark.e2e
def test_the_grid_dry_run_runs_as_written(tmp_path):
    (argv,) = [a for a in of_kind(["python", "-m", "rfsweep"]) if "dry_run=true" in a and "-m" in a]
    r = subprocess.run([sys.executable, *argv[1:], f"paths.sweeps={tmp_path}/multirun", f"paths.runs={tmp_path}/runs"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (r.stdout + r.stderr).count("dry-run: variant=") == 122
    assert not list(tmp_path.rglob("*.ckpt"))


def test_analysis_commands_parse():
    from analysis.__main__ import build_parser

    lines = of_kind(["python", "-m", "analysis"])
    assert {a[3] for a in lines} >= {"rank-table", "status", "compare", "correlate"}
    parser = build_parser()
    for argv in lines:
        parser.parse_args(argv[3:])  # argparse exits (SystemExit) on an unknown command or option


def test_generate_commands_parse(tmp_path):
    from rfsweep.cli.generate import parse_args

    lines = of_kind(["python", "-m", "rfsweep.cli.generate"])
    assert lines
    for argv in lines:
        a = parse_args(argv[3:])
        assert a.prompts and a.run_dir == Path(argv[3])


def test_example_commands_name_real_options():
    lines = [a for a in commands() if a[0] == "python" and a[1].startswith("examples/")]
    assert lines
    for argv in lines:
        assert (ROOT / argv[1]).is_file(), argv[1]
        helptext = subprocess.run([sys.executable, argv[1], "--help"], cwd=ROOT, env=_env(), capture_output=True,
                                  text=True, timeout=120).stdout
        for opt in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
            assert opt in helptext, f"{argv[1]} has no option {opt}"


def test_readme_links_resolve():
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"
