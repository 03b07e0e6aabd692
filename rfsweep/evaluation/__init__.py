"""Evaluation (Sec. 5.1): CLIP score and FID on CLIP image features, against cached reference statistics.

    evaluator = build_evaluator("embedded")            # or "openclip": CLIP-L/14, from the local cache
    ref = reference_stats(evaluator, "shapes", "test", n=1000)
    rows = evaluate(sample_fn, evaluator, prompts, ref, n_samples=1000)
    floor = real_reference_row(evaluator, ref, "shapes", n=1000)
"""

from rfsweep.evaluation.evaluators import (
    EmbeddedCLIP,
    Evaluator,
    EvaluatorUnavailable,
    OpenCLIPEvaluator,
    build_evaluator,
)
from rfsweep.evaluation.grids import save_captioned_grid, save_grid
from rfsweep.evaluation.protocol import eval_prompts, evaluate
from rfsweep.evaluation.reference import ReferenceStats, real_reference_row, reference_stats, split_items
from rfsweep.evaluation.statistics import clip_score, feature_stats, frechet_distance, torchmetrics_fid

__all__ = [
    "EmbeddedCLIP", "Evaluator", "EvaluatorUnavailable", "OpenCLIPEvaluator", "ReferenceStats",
    "build_evaluator", "clip_score", "eval_prompts", "evaluate", "feature_stats", "frechet_distance",
    "real_reference_row", "reference_stats", "save_captioned_grid", "save_grid", "split_items", "torchmetrics_fid",
]
