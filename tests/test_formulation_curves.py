"""Each formulation drawn from the code that trains (`rfsweep.formulations.weighting`, `python -m analysis
formulations`): the measured density of t and of log-SNR and the measured effective weight agree with the paper's
closed forms, shifted or not, and a wrong density or a wrong loss weight shows."""

import numpy as np
import pandas as pd
import pytest

from analysis.__main__ import main as analysis_main
from rfsweep.formulations import ALL_VARIANTS, build_formulation
from rfsweep.formulations.densities import DENSITIES
from rfsweep.formulations.weighting import deviation, measure

CLOSED = [n for n in ALL_VARIANTS if "linear" not in n]  # the paper gives no closed form for the discrete two
RF = [n for n in ALL_VARIANTS if n.startswith("rf")]


def gap(curves: dict, got: str, want: str, min_share: float = 0.01) -> float:
    """Largest relative gap of a measured density from the paper's, over bins holding `min_share` of the draws."""
    count = curves["density_t"] / len(curves["t"]) if got == "density_t" else curves["count"]  # shares of draws
    keep = count >= min_share * count.sum()
    return float(np.abs(curves[got][keep] / curves[want][keep] - 1).max())


@pytest.mark.parametrize("name", CLOSED)
def test_measured_effective_weight_is_the_papers(name):
    assert deviation(measure(build_formulation(name))) < 0.1


@pytest.mark.parametrize("name", [n for n in CLOSED if n.startswith(("rf", "edm", "eps/cos", "v/cos"))])
def test_measured_density_of_log_snr_is_the_papers(name):
    assert gap(measure(build_formulation(name)), "density_lambda", "paper_density_lambda") < 0.1


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("name", RF)
def test_measured_density_of_t_is_the_papers_shifted_or_not(name, shift):
    c = measure(build_formulation(name, shift=shift))
    assert gap(c, "density_t", "paper_density_t") < 0.1
    assert deviation(c) < 0.1  # the effective weight follows the shifted density


def test_a_wrong_density_shows():
    f = build_formulation("rf/lognorm(0.00, 1.00)")
    f._draw = lambda n, **kw: DENSITIES["lognorm"](n, **{**kw, "m": 0.3})  # training drew lognorm(0.30, 1.00)
    c = measure(f)
    assert gap(c, "density_t", "paper_density_t") > 0.2 and deviation(c) > 0.2


def test_a_wrong_loss_weight_shows():
    f = build_formulation("edm(-1.20, 1.20)")
    f.prediction.sigma_data = 0.6  # the loss weighted as if sigma_data were 0.6, the paper's closed form has 0.5
    try:
        assert deviation(measure(f)) > 0.2
    finally:
        f.prediction.sigma_data = 0.5


def test_the_command_writes_the_figure_and_the_table(tmp_path, capsys):
    assert analysis_main(["formulations", "rf/lognorm(0.00, 1.00)", "eps/cos", "edm/rf", "--shift", "3",
                          "--out", str(tmp_path), "--n", "50000"]) == 0
    df = pd.read_csv(tmp_path / "formulations.csv")
    assert (tmp_path / "formulations.png").stat().st_size > 10_000
    assert set(df["variant"]) == {"rf/lognorm(0.00, 1.00)", "eps/cos", "edm/rf"}
    assert set(df[df["family"] == "rf"]["shift"]) == {3.0} and set(df[df["family"] != "rf"]["shift"]) == {1.0}
    assert set(df["quantity"]) == {"density_t", "density_lambda", "loss_weight", "effective"}
    assert "largest gap" in capsys.readouterr().out
    assert analysis_main(["formulations", "rf/bogus", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
