"""A metric is registered in one place (`rfsweep.metrics`): evaluation computes it, the results schema carries it,
the non-dominated sorting ranks on it in its direction, Table 2 and Fig. 3 show it."""

from __future__ import annotations

import pytest
import torch

from analysis.figures import fig3
from analysis.ranking import rank_table
from analysis.tables import table2, write_table2
from rfsweep.metrics import Metric, register, unregister
from rfsweep.results import columns, read_results, write_results
from tests.test_results import row


def _spread(e) -> float:
    """Mean distance of the samples' features from their centre: a diversity score, higher is better."""
    f = e.image_features.double()
    return float((f - f.mean(0)).norm(dim=1).mean())


@pytest.fixture
def third_metric():
    register(Metric("spread", "max", "feature spread", _spread, digits=3))
    yield
    unregister("spread")


def test_evaluation_computes_a_registered_metric(third_metric):
    from rfsweep.evaluation.evaluators import build_evaluator
    from rfsweep.evaluation.protocol import evaluate
    from rfsweep.evaluation.reference import reference_stats

    ev = build_evaluator("embedded")
    ref = reference_stats(ev, "shapes", "test", 8, 32, cache_dir=None)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(32, 3, 8, 8, generator=g) * 2 - 1

    def sample_fn(weights, steps, cfg, captions, seed):
        return images[: len(captions)]

    rows = evaluate(sample_fn, ev, ["a red circle"] * 32, ref, settings=[(5, 5.0)], weights=("ema",), n_samples=32,
                    batch_size=32)
    feats = ev.encode_images(images)
    assert rows[0]["spread"] == pytest.approx(float((feats.double() - feats.double().mean(0)).norm(dim=1).mean()))
    assert {"clip_score", "fid", "spread"} <= set(rows[0]) and "spread" in columns()


def test_a_registered_metric_is_ranked_and_tabulated(third_metric, tmp_path):
    # CLIP and FID tie in every setting: only the third objective separates the variants
    rows = [row(v, "rf", "imagenet", "ema", s, 5.0, clip=0.3, fid=1.0) | {"spread": sp}
            for s in (5, 25, 50) for v, sp in (("rf", 0.9), ("rf/cosmap", 0.5), ("rf/mode(1.29)", 0.1))]
    path = write_results(tmp_path / "results.csv", rows)
    df = read_results(path)
    assert list(df.columns) == list(columns()) and "spread" in df.columns
    t1 = rank_table(df)
    assert list(t1["variant"]) == ["rf", "rf/cosmap", "rf/mode(1.29)"] and list(t1["all"]) == [1.0, 2.0, 3.0]
    t2 = table2(df, order=list(t1["variant"]))
    assert list(t2["imagenet feature spread"]) == [0.9, 0.5, 0.1]
    assert list(t2["imagenet feature spread place"]) == [1, 2, 3]
    write_table2(t2, tmp_path)
    assert "feature spread" in (tmp_path / "table2.md").read_text()
    assert fig3(df, tmp_path / "fig3.png", cfg=5.0) is not None
    unregister("spread")  # without it the three variants tie
    assert list(rank_table(df.drop(columns="spread"))["all"]) == [1.0, 1.0, 1.0]
