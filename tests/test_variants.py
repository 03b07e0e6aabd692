"""Variant names (PAPER.md Sec. 2), the grammar, the mapping form and the sweep file."""

from pathlib import Path

import pytest
import yaml

from rfsweep.formulations import (
    ALL_VARIANTS,
    VariantError,
    build_formulation,
    format_variant,
    parse_variant,
)

# Copied from PAPER.md Sec. 2, in its order.
PAPER_NAMES = [
    "eps/linear", "v/linear", "eps/cos", "v/cos",
    "rf/mode(-1.00)", "rf/mode(-0.54)", "rf/mode(-0.08)", "rf/mode(0.38)", "rf/mode(0.83)", "rf/mode(1.29)",
    "rf/mode(1.75)", "rf/mode(1.00)", "rf",
    *[f"rf/lognorm({m}, {s})" for m in ("-1.00", "-0.50", "0.00", "0.50", "1.00")
      for s in ("0.20", "0.60", "1.00", "1.40", "1.80", "2.20")],
    "rf/cosmap",
    *[f"edm({pm}, {ps})" for pm in ("-1.20", "-0.60", "0.00", "0.60", "1.20") for ps in ("0.60", "1.20", "1.80")],
    "edm/rf", "edm/cos",
]
# Every name printed in the paper's Tables 1-2 (PAPER.md Sec. 3).
TABLE_NAMES = ["rf/lognorm(0.00, 1.00)", "rf/lognorm(1.00, 0.60)", "rf/lognorm(0.50, 0.60)", "rf/mode(1.29)",
               "rf/lognorm(0.50, 1.00)", "eps/linear", "rf/mode(1.75)", "rf/cosmap", "edm(0.00, 0.60)", "rf",
               "v/linear", "edm(0.60, 1.20)", "v/cos", "edm/cos", "edm/rf", "edm(-1.20, 1.20)",
               "rf/lognorm(-0.50, 1.00)"]


def test_all_variants_are_the_papers():
    assert len(ALL_VARIANTS) == 61 == len(set(ALL_VARIANTS))
    assert list(ALL_VARIANTS) == PAPER_NAMES
    assert set(TABLE_NAMES) <= set(ALL_VARIANTS)


@pytest.mark.parametrize("name", PAPER_NAMES + ["rf/lognorm(0.30, 0.90)", "edm(2.00, 0.10)", "rf/mode(-0.50)"])
def test_round_trip(name):
    spec = parse_variant(name)
    assert format_variant(spec) == name
    f = build_formulation(name)
    assert f.name == name
    assert f.family == name.split("/")[0].split("(")[0]
    assert build_formulation(spec.as_dict()).name == name  # mapping form builds the same variant
    assert build_formulation({"name": name}).name == name


def test_mapping_examples():
    cases = {
        "rf/lognorm(0.00, 1.00)": {"family": "rf", "density": "lognorm", "m": 0.0, "s": 1.0},
        "edm(-1.20, 1.20)": {"family": "edm", "P_mean": -1.2, "P_std": 1.2},
        "edm/cos": {"family": "edm", "schedule": "cos"},
        "rf/mode(1.29)": {"family": "rf", "density": "mode", "s": 1.29},
        "rf": {"family": "rf"},
        "eps/linear": {"family": "eps", "schedule": "linear"},
        "v/cos": {"family": "v", "schedule": "cos"},
    }
    for name, d in cases.items():
        assert build_formulation(d).name == name
        assert d.items() <= parse_variant(name).as_dict().items()


def test_lenient_numbers_and_negative_zero():
    assert build_formulation("rf/lognorm(0.3, 1)").name == "rf/lognorm(0.30, 1.00)"
    assert build_formulation({"family": "rf", "density": "lognorm", "m": -0.0, "s": 1}).name == "rf/lognorm(0.00, 1.00)"


@pytest.mark.parametrize("bad, words", [
    ("rf/lognrm(0.00, 1.00)", ["unknown formulation", "rf/lognorm(m, s)", "families"]),
    ("ddpm", ["unknown formulation", "edm(P_mean, P_std)"]),
    ("rf/lognorm(0.00)", ["rf/lognorm(m, s)"]),
    ("rf/lognorm(0.00, 1.005)", ["two decimals"]),
    ("rf/cosmap(1.00)", ["rf/cosmap"]),
    ("rf/mode(1.80)", ["s=1.8", "[-1, 1.7519]"]),
    ("rf/mode(-1.01)", ["s=-1.01"]),
    ("rf/lognorm(0.00, 0.00)", ["s=0.0", "> 0"]),
    ("rf/lognorm(0.00, -1.00)", ["> 0"]),
    ("edm(0.00, 0.00)", ["P_std=0.0", "> 0"]),
    ("eps/linear(1.00)", ["eps/linear"]),
    ({"family": "ddpm"}, ["family='ddpm'", "rf, edm, eps, v"]),
    ({"family": "rf", "density": "beta"}, ["density='beta'", "lognorm"]),
    ({"family": "rf", "density": "lognorm", "m": 0.0}, ["missing ['s']"]),
    ({"family": "edm", "P_mean": 0.0, "P_std": 1.0, "rho": 7}, ["unknown ['rho']"]),
    ({"family": "eps"}, ["schedule=None", "linear, cos"]),
    ({"family": "rf", "density": "mode", "s": 2.0}, ["s=2.0"]),
])
def test_errors_are_helpful(bad, words):
    with pytest.raises(VariantError) as e:
        build_formulation(bad)
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, ValueError)
    for w in words:
        assert w in msg, (w, msg)


def test_sweep_file_lists_all_variants():
    path = Path(__file__).resolve().parents[1] / "sweeps" / "formulation_grid.yaml"
    text = path.read_text()
    grid = yaml.safe_load(text)
    assert grid["variants"] == list(ALL_VARIANTS)
    assert grid["datasets"] == ["imagenet", "cc12m"]
    assert all(f'"{n}"' in text for n in ALL_VARIANTS)  # quoted


def test_formulations_carry_their_spec_and_derive_their_names():
    from rfsweep.formulations.rf import RectifiedFlow
    from rfsweep.formulations.variants import GRAMMAR, SCHEMES, VariantSpec

    f = RectifiedFlow(VariantSpec("rf", "mode", (1.0,)))
    assert f.name == "rf/mode(1.00)" and f.family == "rf" and f.spec.kwargs == {"s": 1.0}
    for name in ALL_VARIANTS:
        built = build_formulation(name)
        assert built.name == name and built.spec == parse_variant(name)
    assert GRAMMAR.split(" | ") == [s.head + (f"({', '.join(s.params)})" if s.params else "") for s in SCHEMES.values()]


def test_unknown_family_or_scheme_is_an_error_not_a_default():
    from rfsweep.formulations.variants import VariantSpec

    with pytest.raises(VariantError, match="unknown"):
        build_formulation(VariantSpec("x0", "cos"))
    with pytest.raises(VariantError, match="unknown"):
        build_formulation(VariantSpec("eps", "sigmoid"))
