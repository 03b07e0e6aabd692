"""The study's metrics, in one registry (Sec. 5.1: CLIP score and FID; FID_inf, KID and CMMD beside them).

The contract: a `Metric` has a name (its results column), a direction (which way is better: the ranking's
non-dominated sorting, Table 2's places and Fig. 3 follow it), a label for tables and figures, and
`compute(evidence)` from what one evaluated sampler setting leaves (`Evidence`: the evaluator's image features of the
samples, the text features of their prompts, the reference images' statistics and features). Adding a metric is one
`register(Metric(...))` here: evaluation computes it, the results schema gets its column, Tables 1-2 and Fig. 3 use it.
The math lives in `rfsweep.evaluation.statistics`.

Table 1 ranks by the metrics marked `ranked` (the paper's two: CLIP score and FID); `set_ranking` chooses others
(`python -m analysis rank-table --rank-by clip_score,cmmd`), `ranked_names` is what every ranking reads. A metric not
ranked by default may be absent from results written before it was registered (its column is NaN there, filled from
the run's evidence bank by the analysis where the bank holds what it needs).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Literal


@dataclass(frozen=True)
class Evidence:
    """What one evaluated setting leaves for the metrics."""

    image_features: Any  # torch.Tensor (N, d): unit rows, the samples
    text_features: Any  # torch.Tensor (N, d): unit rows, their prompts
    reference_mu: Any  # np.ndarray (d,): the reference images' mean feature
    reference_sigma: Any  # np.ndarray (d, d): their covariance
    reference_features: Any = None  # (M, d): unit rows, the reference images (KID, CMMD)


@dataclass(frozen=True)
class Metric:
    name: str  # the results column
    direction: Literal["max", "min"]  # which way is better
    label: str  # figures
    compute: Callable[[Evidence], float]
    digits: int = 3  # decimals in tables
    short: str = ""  # column heading in tables (default: label)
    ranked: bool = True  # Table 1 ranks by it unless `set_ranking` chooses others; False: old results may lack it

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


_RANKING: tuple[str, ...] | None = None  # chosen by `set_ranking`; None: the metrics marked `ranked`


def set_ranking(names=None) -> tuple[str, ...]:
    """Rank Table 1 (and its bootstrap, Friedman's test, the claims) by `names` (registered metrics, at least one);
    None: by the metrics marked `ranked`. Returns the ranking now in force."""
    global _RANKING
    if names is not None:
        names = tuple(dict.fromkeys(names))
        unknown = [n for n in names if n not in METRICS]
        if unknown or not names:
            raise ValueError(f"ranking metrics {unknown or '[]'}: not registered (allowed: {', '.join(METRICS)})")
    _RANKING = names
    return ranked_names()


@contextmanager
def ranking(names=None):
    """Rank by `names` inside the block (None: as now), then as before."""
    before = _RANKING
    try:
        yield set_ranking(names) if names is not None else ranked_names()
    finally:
        set_ranking(before)


def ranked_names() -> tuple[str, ...]:
    """The metrics the ranking uses, in registry order unless `set_ranking` gave another."""
    if _RANKING is not None and all(n in METRICS for n in _RANKING):
        return _RANKING
    return tuple(m.name for m in METRICS.values() if m.ranked)


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


def _reference_features(e: Evidence):
    if e.reference_features is None:
        raise ValueError("KID and CMMD need the reference images' features (Evidence.reference_features)")
    return e.reference_features


def _kid(e: Evidence) -> float:
    from rfsweep.evaluation.statistics import kid

    return kid(e.image_features, _reference_features(e))


def _cmmd(e: Evidence) -> float:
    from rfsweep.evaluation.statistics import cmmd

    return cmmd(e.image_features, _reference_features(e))


def _fid_inf(e: Evidence) -> float:
    from rfsweep.evaluation.statistics import fid_inf

    return fid_inf(e.image_features, e.reference_mu, e.reference_sigma)


register(Metric("fid_inf", "min", "FID_inf", _fid_inf, digits=2, ranked=False))
register(Metric("kid", "min", "KID", _kid, digits=5, ranked=False))
register(Metric("cmmd", "min", "CMMD", _cmmd, digits=3, ranked=False))
