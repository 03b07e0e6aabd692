"""backbone=sd3_medium: a diffusers SD3 transformer folder becomes the run's MM-DiT, exactly; a missing download or
mismatched config fails with one line before anything is trained."""

import pytest
import torch

from rfsweep.run.builders import build_module
from tests.helpers import compose_cfg, run_cli, tiny


def sd3_folder(tmp_path, in_channels=3, context_dim=64, pooled_dim=64):
    """A tiny random SD3Transformer2DModel saved as a diffusers folder with a `transformer` subfolder."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=in_channels, out_channels=in_channels,
                                  num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                  joint_attention_dim=context_dim, caption_projection_dim=16,
                                  pooled_projection_dim=pooled_dim, pos_embed_max_size=8, qk_norm="rms_norm").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(tmp_path / "sd3" / "transformer")
    return model, tmp_path / "sd3"


def overrides(tmp_path, name, steps=2):
    base = [o for o in tiny(tmp_path, steps) if not o.startswith("backbone")]  # tiny() sizes the default mmdit
    return [*base, "backbone=sd3_medium", f"backbone.name={name}"]


def test_sd3_folder_is_the_runs_backbone_exactly(tmp_path):
    model, folder = sd3_folder(tmp_path)
    module, _ = build_module(compose_cfg(overrides(tmp_path, folder), run_dir=str(tmp_path / "run")))
    x, t = torch.randn(3, 3, 8, 8), torch.rand(3)
    c, v = torch.randn(3, 5, 64), torch.randn(3, 64)
    with torch.no_grad():
        ref = model(hidden_states=x, encoder_hidden_states=c, pooled_projections=v, timestep=1000 * t).sample
        out = module.net(x, t, c, v)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5
    assert module.meta.backbone == "sd3_medium"


def test_fine_tunes_from_an_sd3_folder(tmp_path):
    _, folder = sd3_folder(tmp_path)
    r = run_cli(overrides(tmp_path, folder))
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((tmp_path / "runs").rglob("sd3_medium/seed0/checkpoints/step-*.ckpt"))


@pytest.mark.parametrize("case", ["not downloaded", "wrong widths"])
def test_refused_with_one_line_before_training(tmp_path, case):
    if case == "not downloaded":
        name, want = "rfsweep-test/no-such-sd3", ["backbone.name='rfsweep-test/no-such-sd3'", "hf download"]
    else:
        name = sd3_folder(tmp_path, context_dim=48)[1]
        want = ["conditioning.context_dim=64", "joint_attention_dim=48", "allowed: 48"]
    r = run_cli(overrides(tmp_path, name))
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert all(w in lines[0] for w in want), lines[0]
    assert not list((tmp_path / "runs").rglob("*.ckpt"))
