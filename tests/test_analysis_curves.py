import json

from analysis.__main__ import main
from analysis.curves import collect_curves


def _run(root, backbone, losses):
    run = root / "shapes" / backbone
    run.mkdir(parents=True)
    cfg = {"backbone": {"name": backbone, "label": backbone}, "formulation": {"variant": "rf/lognorm(0.00, 1.00)"},
           "data": {"label": "shapes"}}
    (run / "config.json").write_text(json.dumps(cfg))
    lines = ["epoch,step,train/loss,val/loss_ema"]
    for i, v in enumerate(losses):
        lines += [f"0,{100 * i + 50},1.0,", f"0,{100 * (i + 1) - 1},,{v}"]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_fig4_collects_validation_curves(tmp_path, capsys):
    _run(tmp_path, "dit", [1.0, 0.9, 0.85])
    _run(tmp_path, "mmdit", [0.95, 0.8, 0.7])
    curves = collect_curves(tmp_path)
    assert sorted(curves["backbone"].unique()) == ["dit", "mmdit"]
    assert curves[curves.backbone == "mmdit"].sort_values("step")["value"].tolist() == [0.95, 0.8, 0.7]
    assert main(["fig4", str(tmp_path)]) == 0
    assert (tmp_path / "analysis" / "fig4.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert out.index("mmdit") < out.index("dit ")  # sorted by final loss, best first
    assert main(["fig4", str(tmp_path / "empty")]) == 2


def test_resumed_run_curve_joins_its_parts(tmp_path):
    _run(tmp_path, "uvit", [0.9, 0.8])  # steps 99, 199
    run = tmp_path / "shapes" / "uvit"
    (run / "metrics.csv").rename(run / "metrics-part0.csv")
    (run / "metrics.csv").write_text("epoch,step,val/loss_ema\n0,199,0.79\n0,299,0.7\n")
    curve = collect_curves(tmp_path).sort_values("step")
    assert curve["step"].tolist() == [99, 199, 299] and curve["value"].tolist() == [0.9, 0.79, 0.7]
