"""The resolution-dependent shift in training (Sec. 5.3.2): rf variants' training times drawn, then shifted by alpha
(auto: sqrt(m / n) of the pixel counts), as the sampler shifts its grid; the dry run says both shifts and warns in one
line when they differ. (Resumed exactly: tests/test_resume.py runs a shifted run too.)"""

import math

import pytest
import torch

from rfsweep.errors import ConfigError
from rfsweep.formulations import ALL_VARIANTS, VariantError, build_formulation
from rfsweep.run.builders import build_model, train_shift
from rfsweep.run.preflight import preflight
from tests.helpers import compose_cfg, run_cli, tiny

RF = [n for n in ALL_VARIANTS if n.startswith("rf")]


@pytest.mark.parametrize("name", RF)
def test_shifted_draws_are_the_papers_map_of_the_same_draws(name):
    alpha = 3.0
    plain = build_formulation(name).sample_t(10_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shifted = build_formulation(name, shift=alpha).sample_t(10_000, generator=torch.Generator().manual_seed(0),
                                                            dtype=torch.float64)
    torch.testing.assert_close(shifted, alpha * plain / (1 + (alpha - 1) * plain), rtol=0, atol=1e-15)
    assert not torch.equal(shifted, plain)


def test_a_shift_of_one_draws_exactly_as_before():
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    f = build_formulation("rf/lognorm(0.00, 1.00)")
    again = build_formulation(f.name, shift=1.0)
    assert torch.equal(again.sample_t(100, generator=g()), f.sample_t(100, generator=g()))


@pytest.mark.parametrize("overrides,alpha", [
    ([], 1.0),
    (["trainer.shift=3.0"], 3.0),
    (["trainer.shift=auto", "data.resolution=64"], math.sqrt(64**2 / 256**2)),
    (["trainer.shift=auto", "data.resolution=64", "trainer.shift_base=16"], math.sqrt(64**2 / 16**2)),
])
def test_the_configs_alpha_is_the_papers_formula(overrides, alpha):
    cfg = compose_cfg(overrides)
    assert train_shift(cfg) == alpha
    assert preflight(cfg, data=False).shift == alpha  # what the job trains with
    assert build_model(cfg).formulation.shift == alpha  # the module that trains draws with it


def test_paper_value_at_1024_from_a_256_base():
    """sqrt(m / n) at 1024^2 from 256^2 is 4 (the paper then chose 3.0 at 1024^2: trainer.shift=3.0)."""
    cfg = compose_cfg(["trainer.shift=auto"])
    cfg.data.resolution = 1024
    assert train_shift(cfg) == 4.0


def test_a_shift_for_another_family_is_one_line():
    with pytest.raises(ConfigError, match=r"trainer.shift=3.0 .* eps/cos is of the eps family \(allowed: null\)$"):
        preflight(compose_cfg(["trainer.shift=3.0", "formulation.variant=eps/cos"]), data=False)
    with pytest.raises(VariantError, match="applies to the rf family"):
        build_formulation("edm(-1.20, 1.20)", shift=2.0)


def test_dry_run_prints_both_shifts_and_warns_when_they_differ(tmp_path):
    r = run_cli([*tiny(tmp_path), "dry_run=true", "trainer.shift=3.0"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "shift=train 3 sample 1" in r.stdout
    warnings = [line for line in r.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "trainer.shift=3.0" in warnings[0] and "sampler.shift" in warnings[0]
    same = run_cli([*tiny(tmp_path), "dry_run=true", "trainer.shift=3.0", "sampler.shift=3.0"])
    assert "shift=train 3 sample 3" in same.stdout and "warning:" not in same.stdout


def test_a_shifted_run_has_its_own_folder():
    plain, shifted = compose_cfg([]), compose_cfg(["trainer.shift=3.0"])
    assert shifted.job_name == plain.job_name.replace("rf-lognorm_0.00_1.00", "rf-lognorm_0.00_1.00-shift3")
    assert compose_cfg(["trainer.shift=auto"]).job_name.split("/")[1] == "rf-lognorm_0.00_1.00-shiftauto"


def test_a_bad_shift_in_a_dry_run_is_one_line_and_writes_nothing(tmp_path):
    r = run_cli([*tiny(tmp_path), "dry_run=true", "formulation.variant=eps/cos", "trainer.shift=3.0"])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "eps family" in errors[0], r.stderr[-2000:]
    assert not list(tmp_path.rglob("outcome.json"))
