"""The "Where to add" paths of docs/extending.md, each shown to work by touching only the places it names (a metric:
tests/test_metric_contract.py)."""

from __future__ import annotations

import pytest
import torch

from rfsweep.cluster.signals import PreemptionGuard
from rfsweep.run.builders import build_module
from rfsweep.run.fit import fit
from tests.helpers import compose_cfg, tiny


def _train(tmp_path, overrides: list[str], steps: int = 3) -> int:
    base = tiny(tmp_path, steps)
    if any(o.startswith("backbone=") for o in overrides):
        base = [o for o in base if not o.startswith("backbone")]
    cfg = compose_cfg([*base, *overrides], run_dir=str(tmp_path / "run"))
    from rfsweep.run.preflight import preflight

    preflight(cfg)
    module, data = build_module(cfg)
    return fit(cfg, module, data, tmp_path / "run", PreemptionGuard())


def test_a_62nd_formulation_is_a_registry_row_and_its_density(monkeypatch, tmp_path):
    """rf/beta(a, b): t ~ Beta(a, b) on the rectified-flow path: a row in variants.SCHEMES, a density."""
    from rfsweep.formulations import build_formulation, densities, variants

    def beta(n, a: float, b: float, *, generator=None, device=None, dtype=None):
        u = torch.distributions.Beta(torch.tensor(a), torch.tensor(b))
        return u.sample((n,)).to(device=device, dtype=dtype or torch.get_default_dtype())

    monkeypatch.setitem(variants.SCHEMES, ("rf", "beta"), variants.Scheme("rf/beta", ("a", "b"),
                                                                                    "rfsweep.formulations.rf:RectifiedFlow"))
    monkeypatch.setitem(variants._BY_HEAD, "rf/beta", ("rf", "beta"))
    monkeypatch.setitem(densities.DENSITIES, "beta", beta)
    f = build_formulation("rf/beta(2.00, 5.00)")
    assert f.name == "rf/beta(2.00, 5.00)" and f.family == "rf"
    t = f.sample_t(20000)
    assert abs(t.mean().item() - 2 / 7) < 0.01  # Beta(2, 5)'s mean
    assert _train(tmp_path, ['formulation.variant="rf/beta(2.00, 5.00)"']) == 3


class ToyBackbone(torch.nn.Module):
    """A fifth backbone: a per-pixel MLP conditioned on t and the pooled vector."""

    def __init__(self, in_channels, context_dim, pooled_dim, depth=1, width=32, grad_checkpointing=False, **_):
        super().__init__()
        self.inp = torch.nn.Conv2d(in_channels + 1, width, 1)
        self.cond = torch.nn.Linear(pooled_dim, width)
        self.out = torch.nn.Conv2d(width, in_channels, 1)

    def forward(self, x, t, context, pooled):
        h = self.inp(torch.cat([x, t[:, None, None, None].expand(-1, 1, *x.shape[2:])], 1))
        return self.out(torch.nn.functional.silu(h + self.cond(pooled)[:, :, None, None]))


def test_a_fifth_backbone_is_a_module_and_a_registry_entry(monkeypatch, tmp_path):
    from rfsweep.backbones import BACKBONES, Backbone

    monkeypatch.setitem(BACKBONES, "toy", ToyBackbone)
    assert _train(tmp_path, ["backbone=dit", "backbone.name=toy", "backbone.label=toy"]) == 3
    assert isinstance(ToyBackbone(3, 8, 8), Backbone)


def test_a_new_data_reader_is_a_registry_line(monkeypatch, tmp_path):
    """A reader of image files at data.path: a line in rfsweep.data.RAW_READERS (and its module and config)."""
    import rfsweep.data as data

    monkeypatch.setitem(data.RAW_READERS, "noise", "tests.test_extending:NoiseImages")
    assert "noise" in data.dataset_names()
    folder = tmp_path / "noise"
    folder.mkdir()
    assert _train(tmp_path, ["data=coco", "data.name=noise", f"data.path={folder}", "data.resolution=8",
                             "data.label=noise"]) == 3


class NoiseImages(torch.utils.data.Dataset):
    def __init__(self, path, split: str, resolution: int, seed: int = 0):
        self.n, self.r = {"train": 64, "val": 16, "test": 16}[split], resolution

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, self.r, self.r, generator=g) * 2 - 1, "caption": f"noise {i % 4}"}


def test_a_new_sweep_is_a_grid_file_and_an_experiment(monkeypatch, tmp_path):
    from hydra import compose, initialize_config_dir

    import rfsweep.run.resolvers as resolvers
    import rfsweep.run.sweep as sweep
    from tests.helpers import CONF

    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "mini.yaml").write_text('variants: ["rf", "edm/rf", "v/cos"]\ndatasets: [shapes]\n')
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "mini.yaml").write_text("# @package _global_\ndefaults:\n  - override /hydra/sweeper: grid\n"
                                    "name: mini\ngrid: mini\n")
    monkeypatch.setattr(resolvers, "SWEEPS_DIR", sweeps)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=mini", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"],
                      return_hydra_config=True)
    jobs = [[o for o in j if not o.startswith(("+experiment", "hydra."))] for j in sweep.planned_jobs(cfg)]
    assert sorted(sorted(j) for j in jobs) == sorted(
        sorted([f"formulation.variant={v}", "data=shapes"]) for v in ("rf", "edm/rf", "v/cos"))


def test_where_to_add_is_in_the_docs():
    from pathlib import Path

    section = (Path(__file__).resolve().parent.parent / "docs" / "extending.md").read_text()
    for path in ("rfsweep/formulations/variants.py", "rfsweep/backbones/__init__.py", "rfsweep/data/__init__.py",
                 "rfsweep/metrics.py", "sweeps/", "conf/experiment/"):
        assert path in section, path


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
