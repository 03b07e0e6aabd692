"""`python -m analysis`: a thin parser over `analysis.commands`. Its --help answers at once (no torch, pandas, scipy,
matplotlib, and none of what training loads), every subcommand keeps its options, and the options several commands
share are defined once (`analysis.commands.options`)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.__main__ import build_parser, main
from analysis.commands import options

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("lightning", "torchmetrics", "torchvision", "torch", "pandas", "scipy", "matplotlib", "wandb", "sklearn",
         "statsmodels", "scikit_posthocs")

# The option strings and positionals of every subcommand, as the parser had them before it was split into
# `analysis.commands` (taken from that parser): a subcommand may gain options, never lose one.
OPTIONS = {
    "rank-table": (["--allow-incomplete", "--also", "--bootstrap", "--bootstrap-seed", "--ema", "--entity", "--out",
                    "--project", "--results", "--select", "--unpaired", "--wandb", "--no-wandb", "--weights"], []),
    "wandb-dashboard": (["--datasets", "--entity", "--group", "--project", "--save", "--sweep"], []),
    "wandb-sync": (["--dry-run", "--entity", "--project"], ["sweep"]),
    "correlate": (["--also", "--bootstrap", "--bootstrap-seed", "--by-metric", "--column", "--paper", "--weights"],
                  ["a", "b"]),
    "fig4": (["--out"], ["sweep"]),
    "scaling": (["--out"], ["sweep"]),
    "status": (["--all", "--resubmit"], ["sweep"]),
    "formulations": (["--n", "--out", "--shift"], ["variants"]),
    "compare": (["--also", "--bootstrap", "--bootstrap-seed", "--out", "--weights"], ["sweep", "variants"]),
    "power": (["--also", "--pair", "--weights"], ["sweep"]),
}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def loaded_heavy(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_imports_no_heavy_module():
    """`import analysis.__main__` and every --help, in a fresh interpreter, load none of HEAVY."""
    code = f"""
import json, sys
import analysis.__main__ as m
codes = []
for argv in [["--help"], *[[c, "--help"] for c in {sorted(OPTIONS)!r}]]:
    try:
        m.main(argv)
    except SystemExit as e:
        codes.append(e.code)
assert codes == [0] * {len(OPTIONS) + 1}, codes
print(json.dumps(sorted({{k.split(".")[0] for k in sys.modules}} & set({HEAVY!r}))))
"""
    assert loaded_heavy(code) == []


def test_python_m_analysis_help_imports_no_heavy_module():
    """`python -m analysis --help` itself (-X importtime lists every module the interpreter imports)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "analysis", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "rank-table" in out.stdout, out.stderr
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert "analysis" in imported and not imported & set(HEAVY)


@pytest.mark.parametrize("cmd", sorted(OPTIONS))
def test_every_subcommand_keeps_its_options(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    shown = capsys.readouterr().out
    flags, positionals = OPTIONS[cmd]
    parser = subcommands()[cmd]
    strings = {s for a in parser._actions for s in a.option_strings}
    dests = {a.dest for a in parser._actions if not a.option_strings}
    assert set(flags) <= strings and set(positionals) <= dests
    assert all(f in shown for f in flags)


def test_every_command_resolves_to_a_function():
    """Each subcommand names `module:function` of `analysis.commands`; both exist (the import happens at run time)."""
    import importlib

    for name, parser in subcommands().items():
        module, _, function = parser.get_default("command").partition(":")
        assert callable(getattr(importlib.import_module(f"analysis.commands.{module}"), function)), name


def test_shared_options_have_one_definition():
    """An option several subcommands take is built by one helper: the same type, default, metavar, choices and
    action wherever it appears (only the help may be worded for the command); fig4's and scaling's --out alike."""
    seen: dict[str, list[tuple[str, argparse.Action]]] = {}
    for name, parser in subcommands().items():
        for a in parser._actions:
            for s in a.option_strings:
                seen.setdefault(s, []).append((name, a))
    for flag in ("--also", "--bootstrap", "--bootstrap-seed", "--weights"):
        kinds = {(type(a), a.type, repr(a.default), a.metavar, a.choices, a.nargs) for _, a in seen[flag]}
        assert len(seen[flag]) > 1 and len(kinds) == 1, (flag, kinds)
    outs = {name: a for name, a in seen["--out"]}
    assert outs["fig4"].help == outs["scaling"].help == options.SWEEP_OUT_HELP
    assert outs["rank-table"].help == options.OUT_HELP
    assert {type(a) for a in outs.values()} == {argparse._StoreAction}


def test_weight_choices_match_the_results_schema():
    from rfsweep.results import WEIGHTS

    assert options.WEIGHT_CHOICES == WEIGHTS


def test_one_output_folder_rule(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    assert options.output_folder(None, sweep) == sweep / "analysis"
    assert options.output_folder(None, tmp_path / "results.csv") == Path("analysis_out")
    assert options.output_folder(str(tmp_path / "x"), sweep) == tmp_path / "x"


def test_a_bad_option_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["rank-table", "--weights", "best"])
    assert e.value.code == 2 and "invalid choice: 'best'" in capsys.readouterr().err
