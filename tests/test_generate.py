"""`python -m rfsweep.cli.generate`: images for new prompts from a finished run's checkpoint alone."""

import numpy as np
import pytest
import torch
from PIL import Image

from rfsweep.cli.generate import main
from rfsweep.runfolder import checkpoint_path
from rfsweep.train.checkpoint_io import resume_checkpoint
from tests.helpers import run_cli, tiny


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    r = run_cli(tiny(root, steps=4))
    assert r.returncode == 0, r.stderr[-3000:]
    return next((root / "runs").rglob("best.safetensors")).parent.parent


def test_grid_of_prompts_is_written_and_reproducible(run_dir, tmp_path, capsys):
    args = [str(run_dir), "a red circle", "two blue squares", "--n", "3", "--steps", "3", "--cfg", "2"]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "a.png")
    assert main([*args, "--out", str(tmp_path / "b.png")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f)) for f in ("a.png", "b.png"))
    # 2 prompts x 3 images of 8x8, each upscaled 8x to 64 px with its prompt under it, in cells >= 96 px wide
    assert a.shape[0] >= 2 * 64 and a.shape[1] >= 3 * 96
    assert np.array_equal(a, b)
    assert main([*args, "--seed", "1", "--out", str(tmp_path / "c.png")]) == 0
    assert not np.array_equal(a, np.asarray(Image.open(tmp_path / "c.png")))


def test_bad_run_folder_or_checkpoint_is_one_line(run_dir, tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), "x"]) == 2
    assert "no checkpoints/best.safetensors" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt = torch.load(resume_checkpoint(run_dir)[0], weights_only=True)
    del ckpt["rfsweep"]  # and no config.json beside it
    torch.save(ckpt, checkpoint_path(tmp_path / "run", ckpt["global_step"]))
    assert main([str(tmp_path / "run"), "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "holds no run config" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main([str(run_dir), "x", "--steps", "0"])


def test_a_posthoc_run_samples_its_ema_and_any_rebuilt_length(tmp_path, run_dir, capsys):
    """A run trained with ema=posthoc (best.safetensors holds no post-hoc EMAs): its EMA samples as any run's, and
    `--weights phema<s>` samples the length rebuilt from its snapshots at the evaluated step; a run without snapshots,
    or a length out of range, is one line before anything is sampled."""
    r = run_cli([*tiny(tmp_path, steps=4), "ema=posthoc", "ema.snapshot_every=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    post = next((tmp_path / "runs").rglob("best.safetensors")).parent.parent
    common = ["a red circle", "--steps", "2"]
    for w in ("ema", "phema0.05", "phema0.2"):
        assert main([str(post), *common, "--weights", w, "--out", str(tmp_path / f"{w}.png")]) == 0
    ema, p05, p20 = (np.asarray(Image.open(tmp_path / f"{w}.png")) for w in ("ema", "phema0.05", "phema0.2"))
    assert not np.array_equal(ema, p05) and not np.array_equal(p05, p20)
    capsys.readouterr()
    assert main([str(run_dir), *common, "--weights", "phema0.1"]) == 2  # trained without ema=posthoc
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no post-hoc EMA snapshots" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main([str(post), *common, "--weights", "phema0.9"])
    assert "--weights=phema0.9" in capsys.readouterr().err
