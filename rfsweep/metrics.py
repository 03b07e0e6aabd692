"""The study's metrics, in one registry (Sec. 5.1: CLIP score and FID).

The contract: a `Metric` has a name (its results column), a direction (which way is better: the ranking's
non-dominated sorting, Table 2's places and Fig. 3 follow it), a label for tables and figures, and
`compute(evidence)` from what one evaluated sampler setting leaves (`Evidence`: the evaluator's image features of the
samples, the text features of their prompts, the reference images' statistics). Adding a metric is one
`register(Metric(...))` here: evaluation computes it, the results schema gets its column, Tables 1-2 and Fig. 3 use it.
The math lives in `rfsweep.evaluation.statistics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal


@dataclass(frozen=True)
class Evidence:
    """What one evaluated setting leaves for the metrics."""

    image_features: Any  # torch.Tensor (N, d): unit rows, the samples
    text_features: Any  # torch.Tensor (N, d): unit rows, their prompts
    reference_mu: Any  # np.ndarray (d,): the reference images' mean feature
    reference_sigma: Any  # np.ndarray (d, d): their covariance


@dataclass(frozen=True)
class Metric:
    name: str  # the results column
    direction: Literal["max", "min"]  # which way is better
    label: str  # figures
    compute: Callable[[Evidence], float]
    digits: int = 3  # decimals in tables
    short: str = ""  # column heading in tables (default: label)

    @property
    def heading(self) -> str:
        return self.short or self.label


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric to the study: evaluation, the results schema, the ranking, the tables and figures."""
    if metric.direction not in ("max", "min"):
        raise ValueError(f"metric {metric.name}: direction={metric.direction!r} (allowed: max, min)")
    METRICS[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    METRICS.pop(name, None)


def metric_names() -> tuple[str, ...]:
    return tuple(METRICS)


def compute_metrics(e: Evidence) -> dict[str, float]:
    return {m.name: float(m.compute(e)) for m in METRICS.values()}


def _clip_score(e: Evidence) -> float:
    from rfsweep.evaluation.statistics import clip_score

    return clip_score(e.image_features, e.text_features)


def _fid(e: Evidence) -> float:
    from rfsweep.evaluation.statistics import feature_stats, frechet_distance

    mu, sigma = feature_stats(e.image_features)
    return frechet_distance(mu, sigma, e.reference_mu, e.reference_sigma)


register(Metric("clip_score", "max", "CLIP score", _clip_score, digits=3, short="CLIP"))
register(Metric("fid", "min", "FID", _fid, digits=2))
