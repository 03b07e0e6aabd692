"""The scaling study: model.json + validation curves -> loss against training FLOPs and a power-law fit;
a depth sweep runs end to end, one run folder per depth; a sweep whose jobs would share a folder is refused."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis.__main__ import main as analysis_main
from analysis.scaling import collect_scaling, final_points, power_law
from tests.helpers import run_cli


def _run(root, depth, params, flops, losses, batch=8):
    run = root / f"d{depth}"
    run.mkdir(parents=True)
    (run / "model.json").write_text(json.dumps({"backbone": "mmdit", "depth": depth, "params": params,
                                                "batch_size": batch, "train_flops_per_sample": flops}))
    steps = [100 * (i + 1) for i in range(len(losses))]
    pd.DataFrame({"step": steps, "val/loss_ema": losses}).to_csv(run / "metrics.csv", index=False)


def test_compute_axis_and_power_law(tmp_path):
    a, b = 3.0, -0.1
    for d, (params, flops) in enumerate([(1e5, 1e6), (1e6, 1e7), (1e7, 1e8)], start=1):
        c = np.array([100, 200, 300]) * 8 * flops
        _run(tmp_path, d, params, flops, list(a * c**b))
    (tmp_path / "uvit").mkdir()
    (tmp_path / "uvit" / "model.json").write_text(json.dumps({"train_flops_per_sample": None}))  # skipped
    curves = collect_scaling(tmp_path)
    assert len(curves) == 9 and curves["compute"].iloc[0] == 100 * 8 * 1e6
    final = final_points(curves)
    assert list(final["depth"]) == [1, 2, 3]
    fa, fb = power_law(final["compute"].to_numpy(), final["value"].to_numpy())
    assert fa == pytest.approx(a, rel=1e-6) and fb == pytest.approx(b, rel=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        power_law(np.array([1.0]), np.array([1.0]))


@pytest.mark.long
def test_depth_sweep_end_to_end(tmp_path):
    args = ["+experiment=scaling", "-m", f"paths.sweeps={tmp_path}", f"paths.cache={tmp_path}/cache",
            "trainer.max_steps=20", "trainer.val_every=10", "backbone.depth=1,2"]
    r = run_cli(args, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "scaling"
    infos = sorted(json.loads(p.read_text())["params"] for p in sweep.rglob("model.json"))
    assert len(infos) == 2 and infos[0] < infos[1]
    assert analysis_main(["scaling", str(sweep)]) == 0 and (sweep / "analysis" / "scaling.png").is_file()
    assert analysis_main(["status", str(sweep)]) == 0
    r = run_cli([*args, "backbone.label=mmdit", f"paths.sweeps={tmp_path}/b"], timeout=600)
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode != 0 and err and "share the run folder" in err[0], r.stderr[-2000:]
    assert not (tmp_path / "b").exists()
