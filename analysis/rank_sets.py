"""Confidence sets for places in a ranking, read from bootstrap replicates of the scores (Table 1's averaged ranks:
lower is better).

- `marginal_places`: each variant's 95% percentile interval of its place. It covers one variant's place at a time;
  read across the table it says nothing jointly (about one in twenty of 61 intervals can miss).
- `simultaneous_places`: the sets of Mogstad, Romano, Shaikh & Wilhelm (2024, Review of Economic Studies, "Inference
  for ranks ..."; the R package csranks): every ordered pair (j, k) is a one-sided hypothesis H_jk: theta_j <=
  theta_k ("k is not better than j"), rejected when the lower confidence bound of theta_j - theta_k is above 0. The
  bounds are d_jk - c sigma_jk with d_jk the point difference, sigma_jk its bootstrap standard deviation and c the
  (1 - alpha) quantile of max over the pairs of Z_jk / sigma_jk, Z ~ N(0, the replicates' covariance of the
  differences) (studentised max-t; both orders of a pair are in the family, so it is two-sided); Romano-Wolf
  stepdown: the rejected pairs leave the family and c is recomputed until nothing more is rejected. Then place_j
  lies in [1 + #{k rejected below j}, V - #{k rejected above j}] for every j at once with probability 1 - alpha
  (asymptotically).
- `tau_best`: the variants that can be among the best tau, {j : lower bound of place_j <= tau}: the one-sided lower
  bounds of the same family (csranks' `cstaubest`); it holds every variant whose true place is <= tau, all at once,
  with probability 1 - alpha.

A pair whose difference never moves in the replicates (sigma = 0: one variant ahead in every replicate, or two
variants with identical evidence) is decided by its point difference and does not enter the maximum.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def places(scores: np.ndarray) -> np.ndarray:
    """(..., V) scores -> (..., V) places (1 = lowest score; equal scores share the better place)."""
    return 1 + (scores[..., None, :] < scores[..., :, None]).sum(-1)


def marginal_places(reps: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Each variant's percentile interval of its place over the replicates (B, V): (lo, hi), integers."""
    q = (1 - level) / 2
    pos = places(reps)
    return (np.quantile(pos, q, axis=0, method="lower").astype(int),
            np.quantile(pos, 1 - q, axis=0, method="higher").astype(int))


def better_than(point: np.ndarray, reps: np.ndarray, level: float = LEVEL, stepdown: bool = True,
                draws: int = 2000) -> np.ndarray:
    """(V, V) bool: [j, k] when k is shown better (lower) than j, simultaneously over every ordered pair at `level`
    (the module's max-t procedure with stepdown). The critical value is read, as csranks does, from `draws` normal
    vectors with the replicates' covariance (Gaussian multipliers on the centred replicates, so a singular covariance,
    e.g. of two variants with identical evidence, needs no factorisation): the replicates of averaged ranks are
    discrete, and their own studentised maximum is ruled by the rare jumps of pairs that hardly ever move."""
    point, reps = np.asarray(point, np.float64), np.asarray(reps, np.float64)
    v = len(point)
    d = point[:, None] - point[None, :]  # (V, V): theta_j - theta_k
    dstar = reps[:, :, None] - reps[:, None, :]  # (B, V, V)
    sigma = dstar.std(0, ddof=1) if len(reps) > 1 else np.zeros((v, v))
    moves = sigma > 1e-12 * max(1.0, float(np.abs(reps).max(initial=0.0)))
    # fixed pairs: shown better when the point and every replicate agree that k is ahead
    fixed = ~moves & (d > 0) & (dstar.min(0) > 0)
    active = moves & ~np.eye(v, dtype=bool)
    if not active.any():
        return fixed
    g = np.random.default_rng(0).standard_normal((draws, len(reps)))  # fixed: the sets are a function of the data
    z = (g @ (reps - reps.mean(0)) / np.sqrt(len(reps) - 1)).astype(np.float32)  # (draws, V) ~ N(0, cov)
    z = (z[:, :, None] - z[:, None, :]) / np.where(moves, sigma, np.inf).astype(np.float32)  # studentised
    rejected = np.zeros((v, v), dtype=bool)
    while active.any():
        c = np.quantile(np.where(active, z, -np.inf).max((1, 2)), level)
        new = active & (d - c * sigma > 0)
        if not new.any():
            break
        rejected |= new
        active &= ~new
        if not stepdown:
            break
    return rejected | fixed


def simultaneous_places(point: np.ndarray, reps: np.ndarray, level: float = LEVEL,
                        stepdown: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): sets that hold every variant's place at once with probability `level` (see the module)."""
    b = better_than(point, reps, level, stepdown)
    return 1 + b.sum(1), len(point) - b.sum(0)


def tau_best(point: np.ndarray, reps: np.ndarray, tau: int = 1, level: float = LEVEL) -> np.ndarray:
    """(V,) bool: the variants that can be among the best `tau` at `level` (all of the true tau-best at once)."""
    return 1 + better_than(point, reps, level).sum(1) <= tau
