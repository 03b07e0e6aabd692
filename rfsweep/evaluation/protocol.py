"""Evaluate one trained run: sample each (weights, steps, cfg) setting, score CLIP and FID (Sec. 5.1).

`sample_fn(weights, steps, cfg, captions, seeds) -> (B, 3, H, W) in [-1, 1]` is the caller's: it hides
formulation, backbone and sampler. Sample i of every setting is drawn from the noise seed `noise_seed(seed, i)`, so
all settings and all variants see the same prompts and the same initial noise (common random numbers), whatever the
batch size. Each setting's per-sample evidence (`rfsweep.evaluation.bank.SampleEvidence`) goes to `on_evidence`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from rfsweep.evaluation.bank import sample_evidence
from rfsweep.evaluation.grids import save_captioned_grid
from rfsweep.evaluation.reference import ReferenceStats
from rfsweep.metrics import Evidence, compute_metrics
from rfsweep.results import SETTINGS, setting_name


def noise_seed(seed: int, index: int) -> int:
    """The seed of evaluation sample `index`'s initial noise: the same in every setting, variant and batch."""
    return int(seed) * 1_000_003 + int(index)


class EvaluationStopped(RuntimeError):
    """A stop signal arrived during evaluation; the settings done so far are not kept."""


def eval_prompts(captions: list[str], n: int) -> list[str]:
    """The first n held-out captions, cycled if there are fewer."""
    return list(itertools.islice(itertools.cycle(captions), n))


@torch.no_grad()
def evaluate(sample_fn, evaluator, prompts: list[str], ref_stats: ReferenceStats, settings=SETTINGS,
             weights=("ema", "raw"), n_samples: int = 1000, batch_size: int = 250, seed: int = 0,
             grid_dir: str | Path | None = None, grid_size: int = 64, stop=None, done=(),
             on_row=None, on_setting=None, on_evidence=None) -> list[dict]:
    """One row per (weights, steps, cfg): {weights, steps, cfg, <each registered metric>, n_samples}.

    prompts are cycled to n_samples; with `grid_dir`, the first `grid_size` samples of each setting are saved as
    `<setting_name>.png` with their prompts. Settings in `done` ((weights, steps, cfg) triples, evaluated earlier)
    are skipped; `on_row(row)` is called as each setting finishes (the caller writes it, so a pre-emption keeps the
    finished settings); `on_setting(weights, steps, cfg)` as each starts. `stop()`, if given, is asked before each
    setting and between its batches: True raises EvaluationStopped (a pre-emption signal: the setting under way is
    dropped, the job is requeued and evaluates the rest; at the paper's protocol one setting can outlast the time
    between the signal and the kill).
    """
    if ref_stats.evaluator_id != evaluator.id:
        raise ValueError(f"reference statistics were computed with {ref_stats.evaluator_id!r}, "
                         f"not with the evaluator {evaluator.id!r}")
    n_prompts = len(prompts)
    prompts = eval_prompts(prompts, n_samples)
    text = evaluator.encode_texts(prompts)  # (N, d)
    seeds = [noise_seed(seed, i) for i in range(n_samples)]
    rows, done = [], {(w, int(s), round(float(c), 6)) for w, s, c in done}
    for w, (steps, cfg) in itertools.product(weights, settings):
        if (w, int(steps), round(float(cfg), 6)) in done:
            continue
        if on_setting is not None:
            on_setting(w, steps, cfg)
        feats, shown = [], []
        for i in range(0, n_samples, batch_size):
            if stop is not None and stop():
                raise EvaluationStopped(f"stopped after {len(rows)} of {len(weights) * len(settings)} settings")
            images = sample_fn(w, steps, cfg, prompts[i : i + batch_size], seeds[i : i + batch_size])
            feats.append(evaluator.encode_images(images).cpu())
            if grid_dir is not None and sum(len(s) for s in shown) < grid_size:
                shown.append(images[: grid_size - sum(len(s) for s in shown)].cpu())
        evidence = Evidence(torch.cat(feats), text, ref_stats.mu, ref_stats.sigma, ref_stats.features)
        if on_evidence is not None:
            on_evidence(w, steps, cfg, sample_evidence(evidence.image_features, text, n_prompts, seeds))
        rows.append({"weights": w, "steps": steps, "cfg": cfg, **compute_metrics(evidence), "n_samples": n_samples})
        if grid_dir is not None:
            shown = torch.cat(shown)
            save_captioned_grid(shown, prompts[: len(shown)], Path(grid_dir) / f"{setting_name(w, steps, cfg)}.png")
        if on_row is not None:
            on_row(rows[-1])
    return rows
