"""Post-hoc EMA (EDM2, Karras et al. 2024, Sec. 3 and App. C): power-function EMAs tracked during training, snapshots
of them every N steps, and an EMA of any length rebuilt afterwards as the least-squares combination of the snapshots.

A power-function EMA with exponent gamma averages the weights theta_t of steps t = 1..T with the profile
p(t; T) = (gamma + 1) t^gamma / T^(gamma + 1): the update at step t is theta_ema <- beta_t theta_ema + (1 - beta_t)
theta_t with beta_t = (1 - 1/t)^(gamma + 1). Its length is given by sigma_rel, the profile's standard deviation
relative to T: sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)).

Snapshots: `<checkpoints>/posthoc/step<NNNNNNN>.safetensors`, tensors `<sigma_rel>/<state key>` of every tracked EMA
(float32, or `ema.snapshot_dtype`), metadata the step and the sigma_rels. Under FSDP each rank writes its own shard
(`step<NNNNNNN>.rank<r>of<w>.safetensors`, dim-0 shards as FSDP2 cuts them) and the reader joins them.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from rfsweep.atomic import atomic_save_tensors
from rfsweep.errors import UserError

SIGMA_REL_MIN, SIGMA_REL_MAX = 1e-4, 0.28  # gamma = 0 (a uniform average of all steps) has sigma_rel 0.2887
FOLDER = "posthoc"
_NAME = re.compile(r"step(\d{7,})(?:\.rank(\d+)of(\d+))?\.safetensors$")


class PostHocError(UserError):
    """A run folder without usable snapshots, or a sigma_rel out of range."""


def sigma_rel_of(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_of(sigma_rel: float) -> float:
    """The exponent of the power-function EMA with relative standard deviation `sigma_rel` (in [1e-4, 0.28]):
    sigma_rel falls monotonically in gamma >= 0, so bisection finds it."""
    from scipy.optimize import brentq  # deferred: scipy (~0.3 s), needed only to rebuild a post-hoc EMA

    if not SIGMA_REL_MIN <= sigma_rel <= SIGMA_REL_MAX:
        raise PostHocError(f"sigma_rel={sigma_rel} (allowed: a number in [{SIGMA_REL_MIN:g}, {SIGMA_REL_MAX}])")
    return float(brentq(lambda g: sigma_rel_of(g) - sigma_rel, 0.0, 1e9, xtol=1e-12, rtol=1e-14, maxiter=500))


def beta(step: int, gamma: float) -> float:
    """The power-function EMA's decay at training step `step` (1, 2, ...): 0 at the first, so it starts from theta_1."""
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def tag(sigma_rel: float) -> str:
    return f"{sigma_rel:.4g}"


# -- snapshots ------------------------------------------------------------------------------------------------------
def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # an FSDP2 parameter is a DTensor: this rank's shard


def snapshot_path(folder: Path, step: int, rank: int = 0, world: int = 1) -> Path:
    return Path(folder) / (f"step{step:07d}.safetensors" if world == 1 else
                           f"step{step:07d}.rank{rank}of{world}.safetensors")


def _sharded(t: torch.Tensor) -> bool:
    """A DTensor cut along dim 0 (FSDP2's parameters); buffers and plain tensors are whole on every rank."""
    placements = getattr(t, "placements", None)
    return bool(placements) and any(getattr(pl, "dim", None) == 0 for pl in placements)


def write_snapshot(folder: str | Path, step: int, emas: dict[float, nn.Module], rank: int = 0, world: int = 1,
                   dtype: torch.dtype = torch.float32) -> Path:
    """One snapshot of every tracked EMA (`{sigma_rel: module}`, floating tensors as `dtype`), atomically (through
    `rfsweep.atomic.atomic_save_tensors`, as best.safetensors); under FSDP (`world` > 1) this rank's shards, with the
    full shapes and which tensors are sharded in the metadata. float16 (EDM2's choice: 11 significant bits, where
    bfloat16 has 8 and loses the length signal, `tests/test_posthoc_ema.py`) with a range check: a tensor with a
    value beyond float16's range (65504) is kept in float32, named in the metadata (`float32_kept`)."""
    tensors, shapes, sharded, kept = {}, {}, [], []
    for sigma_rel, module in emas.items():
        for key, value in module.state_dict().items():
            name = f"{tag(sigma_rel)}/{key}"
            local = _local(value).detach()
            as_dtype = dtype if value.is_floating_point() else None
            if as_dtype == torch.float16 and local.numel() and local.abs().max() > torch.finfo(torch.float16).max:
                as_dtype = torch.float32
                kept.append(name)
            tensors[name] = local.to("cpu", as_dtype).contiguous()
            shapes[name] = list(value.shape)
            if _sharded(value):
                sharded.append(name)
    meta = {"step": str(step), "sigma_rels": json.dumps([float(s) for s in emas]), "rank": str(rank),
            "world": str(world), "shapes": json.dumps(shapes), "sharded": json.dumps(sharded),
            "float32_kept": json.dumps(kept)}
    return atomic_save_tensors(tensors, snapshot_path(Path(folder), step, rank, world), metadata=meta)


def snapshot_step_of(path: Path) -> int | None:
    """The step of a snapshot file (any rank's shard), from its name; None for another file."""
    m = _NAME.match(path.name)
    return int(m.group(1)) if m else None


def snapshot_steps(folder: str | Path) -> dict[int, list[Path]]:
    """{step: its files in rank order} of the complete snapshots in `folder`: every rank's shard of one world size
    present; where a step was written by runs of two world sizes (a resume on other devices), the newest complete
    set."""
    found: dict[tuple[int, int], dict[int, Path]] = {}
    for p in Path(folder).glob("step*.safetensors"):
        m = _NAME.match(p.name)
        if m:
            found.setdefault((int(m.group(1)), int(m.group(3) or 1)), {})[int(m.group(2) or 0)] = p
    out: dict[int, tuple[float, list[Path]]] = {}
    for (step, world), files in found.items():
        if sorted(files) != list(range(world)):
            continue
        paths = [files[r] for r in range(world)]
        newest = max(q.stat().st_mtime for q in paths)
        if step not in out or newest > out[step][0]:
            out[step] = (newest, paths)
    return {step: out[step][1] for step in sorted(out)}


class _Snapshot:
    """One snapshot's files opened lazily (memory-mapped): its step, tracked sigma_rels and whole tensors on demand,
    the shards of FSDP joined along dim 0."""

    def __init__(self, files: list[Path]):
        self.files, self.handles = files, []
        for rank, p in enumerate(files):
            try:
                h = safe_open(str(p), framework="pt")
                meta = h.metadata() or {}
                if int(meta.get("rank", 0)) != rank or int(meta.get("world", 1)) != len(files):
                    raise ValueError(f"holds rank {meta.get('rank')} of {meta.get('world')}, not {rank} of "
                                     f"{len(files)}")
                if rank == 0:
                    self.step, self.sigma_rels = int(meta["step"]), [float(x) for x in json.loads(meta["sigma_rels"])]
                    self.shapes = json.loads(meta["shapes"])
                    self.sharded = set(json.loads(meta.get("sharded", "[]")))
            except Exception as e:
                raise PostHocError(f"snapshot {p} is corrupt ({type(e).__name__}: {e}); delete this step's files "
                                   f"to rebuild without it") from None
            self.handles.append(h)

    def keys(self, sigma_rel: float) -> list[str]:
        prefix = f"{tag(sigma_rel)}/"
        return [n[len(prefix):] for n in self.shapes if n.startswith(prefix)]

    def tensor(self, sigma_rel: float, key: str) -> torch.Tensor:
        name = f"{tag(sigma_rel)}/{key}"
        handles = self.handles if name in self.sharded else self.handles[:1]  # whole on every rank: rank 0's
        pieces = []
        for p, h in zip(self.files, handles):
            try:
                pieces.append(h.get_tensor(name))
            except Exception as e:
                raise PostHocError(f"snapshot {p} is corrupt ({type(e).__name__}: {e}); delete this step's files to "
                                   f"rebuild without it") from None
        full = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
        if list(full.shape) != list(self.shapes[name]):
            raise PostHocError(f"snapshot {self.files[0]}: {name} has shape {list(full.shape)}, its metadata "
                               f"{self.shapes[name]}; delete this step's files to rebuild without it")
        return full


def read_snapshot(files: list[Path]) -> tuple[int, dict[float, dict[str, torch.Tensor]]]:
    """(step, {sigma_rel: full state dict}) of one snapshot, its shards joined along dim 0."""
    snap = _Snapshot(files)
    return snap.step, {r: {k: snap.tensor(r, k) for k in snap.keys(r)} for r in snap.sigma_rels}


# -- the least-squares reconstruction -----------------------------------------------------------------------------
def profile_dot(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """The inner product of two power-function profiles, integral over [0, min(t_a, t_b)] of p(t; t_a, gamma_a)
    p(t; t_b, gamma_b) dt = (g_a + 1)(g_b + 1) m^(g_a + g_b + 1) / ((g_a + g_b + 1) t_a^(g_a + 1) t_b^(g_b + 1)),
    m = min(t_a, t_b); evaluated in logs (gamma reaches hundreds). Broadcasts."""
    t_a, g_a, t_b, g_b = (np.asarray(x, dtype=np.float64) for x in (t_a, gamma_a, t_b, gamma_b))
    m = np.minimum(t_a, t_b)
    log = (g_a + g_b + 1) * np.log(m) - (g_a + 1) * np.log(t_a) - (g_b + 1) * np.log(t_b)
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * np.exp(log)


FIT_TOLERANCE = 0.02  # a rebuilt length whose profile misses its target's by more than this (relative L2) is flagged


def _normal_equations(steps, gammas, step: float, gamma: float) -> tuple[np.ndarray, np.ndarray, float]:
    t, g = np.asarray(steps, dtype=np.float64), np.asarray(gammas, dtype=np.float64)
    a = profile_dot(t[:, None], g[:, None], t[None, :], g[None, :])
    b = profile_dot(t, g, float(step), float(gamma))
    return a, b, float(profile_dot(float(step), float(gamma), float(step), float(gamma)))


def coefficients(steps, gammas, step: float, gamma: float) -> np.ndarray:
    """The weights x of the snapshots (taken at `steps` of EMAs with `gammas`) whose sum best matches the profile of
    (`step`, `gamma`) in L2: the normal equations A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p_target>, solved
    directly (A is symmetric positive definite: `solve` equals `lstsq` to 1e-11 on 200 snapshots, 4-6x faster);
    `lstsq` only where A is singular (a snapshot listed twice)."""
    a, b, _ = _normal_equations(steps, gammas, step, gamma)
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


def fit_error(steps, gammas, step: float, gamma: float, x: np.ndarray) -> float:
    """How far the rebuilt profile sum_i x_i p_i lies from the target's, relative L2: |sum x p - p_t| / |p_t|."""
    a, b, tt = _normal_equations(steps, gammas, step, gamma)
    return math.sqrt(max(tt - 2 * float(x @ b) + float(x @ a @ x), 0.0) / tt)


def reconstruct(folder: str | Path, sigma_rel: float, step: int | None = None,
                using: list[float] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """One length: `reconstruct_many` with one sigma_rel."""
    states, infos = reconstruct_many(folder, [sigma_rel], step, using)
    return states[sigma_rel], infos[sigma_rel]


def fit_plan(folder: str | Path, sigma_rels: list[float], step: int | None = None, using: list[float] | None = None):
    """What `reconstruct_many` reads and how it weighs it, from the snapshots' headers alone (no tensor is read):
    (snapshots, tracked sigma_rels, (snapshot, sigma_rel) pairs, normalised coefficients per length, info per length).
    The coefficients are normalised to sum to 1; info per length: step, snapshots used, their least-squares sum
    before that, the fit error (`fit_error`) of the profile of the weights used (the normalised coefficients), and
    `poor` (a line on stderr says why) when that error exceeds FIT_TOLERANCE: a length far beyond the tracked ones, or
    too few snapshots early in training for a long length (20 snapshots of 0.05 and 0.10 fit 0.25 to 6.0%, 100 to
    0.8%; 0.08-0.15 to 0.2-0.6% with 20)."""
    for sigma_rel in sigma_rels:
        gamma_of(sigma_rel)  # in range, before any snapshot is read
    found = snapshot_steps(folder)
    if not found:
        raise PostHocError(f"{folder}: no post-hoc EMA snapshots (train with ema=posthoc or ema.sigma_rels=[...])")
    step = max(found) if step is None else int(step)
    if step not in found:  # the profile up to `step` needs the EMAs as they were at `step`
        near = sorted(found, key=lambda s: abs(s - step))[:2]
        raise PostHocError(f"{folder}: no snapshot at step {step} (allowed: a snapshot's step, e.g. "
                           f"{', '.join(map(str, sorted(near)))}; snapshots at steps {min(found)}..{max(found)})")
    chosen = [s for s in found if s <= step]
    snaps = [_Snapshot(found[s]) for s in chosen]
    tracked = [r for r in snaps[0].sigma_rels if using is None or any(abs(r - u) < 1e-9 for u in using)]
    if not tracked:
        raise PostHocError(f"{folder}: snapshots hold sigma_rels {snaps[0].sigma_rels} (allowed in `using`: those)")
    pairs = [(snap, r) for snap in snaps for r in tracked]
    steps, gammas = [snap.step for snap, _ in pairs], [gamma_of(r) for _, r in pairs]
    weights, infos = {}, {}
    for sigma_rel in sigma_rels:
        raw = coefficients(steps, gammas, step, gamma_of(sigma_rel))
        weights[sigma_rel] = raw / raw.sum()  # an average of weights; the raw sum says how well the profile matched
        err = fit_error(steps, gammas, step, gamma_of(sigma_rel), weights[sigma_rel])  # of the weights used
        infos[sigma_rel] = {"step": step, "snapshots": len(chosen), "sum": float(raw.sum()), "sigma_rel": sigma_rel,
                            "fit_error": err, "poor": err > FIT_TOLERANCE}
        if infos[sigma_rel]["poor"]:
            print(f"warning: post-hoc EMA sigma_rel={sigma_rel:g} at step {step} is poorly matched by the snapshots "
                  f"(profile fit error {err:.1%}, allowed {FIT_TOLERANCE:.0%}; coefficient sum {raw.sum():.3f}; "
                  f"tracked {tracked}, {len(chosen)} snapshots: track a longer EMA, e.g. ema=posthoc_long, or "
                  f"snapshot more often)", file=sys.stderr, flush=True)
    return snaps, tracked, pairs, weights, infos


def reconstruct_many(folder: str | Path, sigma_rels: list[float], step: int | None = None,
                     using: list[float] | None = None) -> tuple[dict[float, dict[str, torch.Tensor]], dict]:
    """The EMAs of lengths `sigma_rels` at `step` (default: the last snapshot's), from the snapshots of the tracked
    EMAs (`using`: only those sigma_rels; default all) taken at or before `step`, in one pass over the snapshots
    (EDM2 rebuilds several lengths per pass): each snapshot tensor is read once and added to every length's sum; the
    memory is one model per length and one tensor. The coefficients and infos: `fit_plan`."""
    snaps, tracked, pairs, weights, infos = fit_plan(folder, sigma_rels, step, using)
    out: dict[float, dict[str, torch.Tensor]] = {r: {} for r in sigma_rels}
    for key in snaps[0].keys(tracked[0]):
        last = snaps[-1].tensor(tracked[-1], key)
        if not last.is_floating_point():
            for r in sigma_rels:
                out[r][key] = last  # integer buffers: the last snapshot's
            continue
        accs = {r: torch.zeros(last.shape, dtype=torch.float64) for r in sigma_rels}
        for i, (snap, r_tracked) in enumerate(pairs):
            t = snap.tensor(r_tracked, key).double()  # read once for every length
            for r in sigma_rels:
                accs[r].add_(t, alpha=float(weights[r][i]))
        for r in sigma_rels:
            out[r][key] = accs[r].float()
    return out, infos
