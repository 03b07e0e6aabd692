"""What a job will cost, from its config alone (nothing loaded, the backbone built on the meta device): parameters,
training and evaluation FLOPs, and GPU-hours at a stated achieved throughput (`cluster.tflops_per_gpu`, per GPU).
`dry_run=true` prints one line per job, and with `reference_sweep` the resolution the planned sweep can expect."""

from __future__ import annotations

import json
from functools import lru_cache

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rfsweep.backbones.flops import counted_train_flops, parameter_count, train_flops_per_sample
from rfsweep.errors import UserError
from rfsweep.run.builders import BACKBONE_KEYS, context_len, formulation_for, latent_shape, variant_name
from rfsweep.run.memory import host_plan, launcher_mem_gb, memory_plan


def job_flops(cfg: DictConfig) -> dict:
    """{"params", "train_flops_per_sample", "train_flops", "eval_flops"} of a job (training: steps x batch; evaluation:
    the sampler settings' network evaluations, two per step with guidance, a forward pass being a third of a step)."""
    backbone = {k: v for k, v in OmegaConf.to_container(cfg.backbone, resolve=True).items() if k not in BACKBONE_KEYS}
    params, per_sample = _backbone_flops(json.dumps(backbone, sort_keys=True), tuple(latent_shape(cfg)),
                                         context_len(cfg), cfg.conditioning.context_dim, cfg.conditioning.pooled_dim)
    tr, e = cfg.trainer, cfg.eval
    evals = nfe_per_run(1, e.settings, e.weights) if e.enabled else 0
    return {"params": params, "train_flops_per_sample": per_sample,
            "train_flops": per_sample * int(tr.batch_size) * int(tr.max_steps),
            "eval_flops": per_sample / 3 * int(e.n_samples) * evals}


def nfe_per_run(n_samples: int, settings, weights) -> int:
    """Network evaluations of one evaluation: samples x sampling steps, twice per step with guidance, per weights."""
    return int(n_samples) * sum(int(s) * (2 if float(c) != 1.0 else 1) for s, c in settings) * len(weights)


@lru_cache(maxsize=64)
def _backbone_flops(backbone_json: str, shape: tuple[int, int, int], tokens: int, context_dim, pooled_dim) -> tuple:
    """(parameters, training FLOPs per sample) of a backbone (its node resolved, as `build_backbone` instantiates it,
    as JSON) for latents `shape` and `tokens` text tokens, built on the meta device. Cached: it depends on nothing
    else, and a sweep's jobs share a few backbones (122 jobs on one backbone and two data sets: two counts, each
    ~0.1 s of torch's FLOP counter for a backbone `train_flops_per_sample` has no formula for)."""
    with torch.device("meta"):
        net = instantiate(json.loads(backbone_json))
    per_sample = train_flops_per_sample(net, shape, tokens)
    if per_sample is None:
        per_sample = counted_train_flops(net, shape, tokens, int(context_dim), int(pooled_dim))
    return parameter_count(net), per_sample


def dry_run_line(cfg: DictConfig) -> str:
    formulation = formulation_for(cfg)  # a bad name or shift: one line, before anything else
    head = (f"dry-run: variant={formulation.name} dataset={cfg.data.label} backbone={cfg.backbone.label} "
            f"run={cfg.job_name}")
    alpha, sampling = formulation.shift, float(cfg.sampler.shift)
    shift = f" shift=train {alpha:g} sample {sampling:g}"
    if formulation.family == "rf" and abs(alpha - sampling) > 1e-9:  # the paper shifts both by one alpha (5.3.2)
        shift += (f"\nwarning: {cfg.job_name}: the training shift {alpha:g} (trainer.shift={cfg.trainer.shift}) "
                  f"differs from the sampling shift {sampling:g} (sampler.shift; the paper uses one alpha for both)")
    try:
        f = job_flops(cfg)
    except Exception as e:  # e.g. a backbone read from a checkpoint folder: no estimate, the plan still lists the job
        return f"{head} (no estimate: {type(e).__name__}){shift}"
    rate = float(cfg.cluster.tflops_per_gpu) * 1e12
    hours = (f["train_flops"] + f["eval_flops"]) / rate / 3600
    try:
        plan = memory_plan(cfg)
        memory = plan.describe()
        mem_gb = launcher_mem_gb()
        node = host_plan(cfg, plan)
        host = node.describe() + (f" = {node.total / (float(mem_gb) * 1e9):.0%} of hydra.launcher.mem_gb={mem_gb:g}"
                                  if mem_gb else "")
    except Exception as e:
        memory = host = f"? ({type(e).__name__})"
    return (f"{head} params={f['params'] / 1e6:.1f}M train_flops={f['train_flops']:.2e} "
            f"eval_flops={f['eval_flops']:.2e} gpu_hours={hours:.3g} "
            f"(at {cfg.cluster.tflops_per_gpu:g} TFLOP/s per GPU, cluster.tflops_per_gpu) "
            f"memory={memory} host={host}{posthoc_disk(cfg, f['params'])}{shift}")


def posthoc_disk(cfg: DictConfig, params: int) -> str:
    """The post-hoc EMA snapshots' disk (every tracked EMA, every `ema.snapshot_every` steps, the last, and at most
    one more at the evaluated step when it lies off the cadence: `PostHocSnapshots.at_best`)."""
    if not cfg.ema.sigma_rels or not cfg.ema.snapshot_every:  # (the latter refused by the preflight)
        return ""
    steps, every = int(cfg.trainer.max_steps), int(cfg.ema.snapshot_every)
    snapshots = steps // every + (1 if steps % every else 0) + (1 if every > 1 else 0)
    dtype = cfg.ema.snapshot_dtype or "float32"
    size = snapshots * len(cfg.ema.sigma_rels) * params * (4 if dtype == "float32" else 2)
    return f" posthoc_snapshots={snapshots}x{len(cfg.ema.sigma_rels)} posthoc_disk={size / 2**30:.3g}GiB ({dtype})"


def expected_resolution(reference: str, jobs: list[DictConfig]) -> str:
    """What the planned `jobs` can resolve, read from a finished `reference` sweep's measured variation (its evidence
    banks: `analysis.confidence.variances`), scaled to the jobs' distinct prompts (their samples per setting, at most
    the captions the reference cycled through) and seeds per variant: per data set and metric the smallest difference
    of two variants' means told apart at 5% with 80% power."""
    from analysis.confidence import resolution, sweep_variances  # deferred: pandas, scipy, torchmetrics; reference only

    try:
        v = sweep_variances(reference)
    except (ValueError, OSError) as e:
        raise UserError(f"reference_sweep={reference}: {str(e).splitlines()[0]} (allowed: a finished sweep folder "
                        f"with evidence banks, or null)") from e
    seeds: dict[str, dict[str, set]] = {}
    prompts: dict[str, int] = {}
    for cfg in jobs:
        ds = str(cfg.data.label)
        seeds.setdefault(ds, {}).setdefault(variant_name(cfg.formulation), set()).add(int(cfg.seed))
        prompts[ds] = min(prompts.get(ds, int(cfg.eval.n_samples)), int(cfg.eval.n_samples))
    lines, frames = [], []
    for ds in sorted(seeds):
        ref = v[v["dataset"] == ds]
        if not len(ref):
            have = ", ".join(sorted(set(v["dataset"])))
            lines.append(f"resolution: {ds}: not in reference_sweep={reference} (it has {have})")
            continue
        n_seeds = min(len(s) for s in seeds[ds].values())
        pool = int(ref["prompts"].iloc[0]) if ref["samples"].iloc[0] > ref["prompts"].iloc[0] else None
        distinct = min(prompts[ds], pool) if pool else prompts[ds]  # samples cycle a data set's held-out captions
        planned = resolution(ref, prompts=distinct, seeds=n_seeds)
        planned["reference"] = resolution(ref)["mde"].to_numpy()
        frames.append(planned)
        if ref["seed_sd"].isna().all():
            lines.append(f"resolution: {ds}: the reference has one seed per variant: the seed-to-seed variation is not "
                         f"measured and the expected resolution counts the sampling noise alone (a lower bound)")
    head = (f"expected resolution (smallest difference of two variants' means told apart at 5% with 80% power; "
            f"from reference_sweep={reference}, scaled to this sweep's samples and seeds):")
    if not frames:
        return "\n".join(lines)
    import pandas as pd  # deferred: pandas (~0.3 s), for a reference sweep only

    table = pd.concat(frames)[["dataset", "metric", "prompts", "seeds", "sample_sd", "seed_sd", "mde", "reference"]]
    table = table.rename(columns={"mde": "expected_mde", "reference": "reference_mde"})
    return "\n".join([head, table.to_markdown(index=False, floatfmt=".4g"), *lines])
