"""The config's schema: one dataclass per config group (Hydra structured configs), each field with its type, default
and range rule. Hydra composes every YAML of a group on top of its schema (`defaults: [<schema name>, _self_]`), so a
misspelled or renamed key, or a value of the wrong type, fails at composition; `rfsweep.run.config.validate` runs every
field's rule, for every job of a sweep before any job starts. A rule lives on its field: renaming a key moves it.

Groups without a schema here: `formulation` (checked by the variant grammar, `rfsweep.formulations.variants`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from rfsweep.metrics import metric_names

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def positive_int(v) -> bool:
    return _int(v) and v > 0


def nonneg_int(v) -> bool:
    return _int(v) and v >= 0


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _lengths(v) -> bool:
    """Post-hoc EMA lengths: sigma_rel values in [1e-4, 0.28], distinct as they are named (4 significant digits)."""
    return all(number(x) and 1e-4 <= x <= 0.28 for x in v) and len({f"{float(x):.4g}" for x in v}) == len(v)


def rule(default: Any, check: Callable[[Any], bool], allowed: str, factory: Callable | None = None):
    """A field with its range rule: `check(value)` must hold; `allowed` says what is allowed."""
    meta = {"check": check, "allowed": allowed}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RootConf:
    name: str = "default"  # experiment name: run and sweep folders are grouped under it
    seed: int = rule(0, nonneg_int, "an integer >= 0")
    dry_run: bool = False  # print each job and its cost, train nothing
    reference_sweep: Optional[str] = None  # a finished sweep with evidence banks: the dry run's expected resolution
    stage: str = rule("all", lambda v: v in ("all", "train", "evaluate"),
                      "all, train (stop once trained) or evaluate (a trained run's evaluation only)")
    grid: Optional[str] = None  # a sweep's grid (sweeps/<grid>.yaml), read by hydra/sweeper=grid
    job_name: str = MISSING
    run_dir: str = MISSING
    formulation: Any = MISSING
    backbone: Any = MISSING
    data: Any = MISSING
    conditioning: Any = MISSING
    autoencoder: Any = MISSING
    trainer: Any = MISSING
    optimizer: Any = MISSING
    ema: Any = MISSING
    sampler: Any = MISSING
    eval: Any = MISSING
    logger: Any = MISSING
    cluster: Any = MISSING
    paths: Any = MISSING
    rung: Any = MISSING


@dataclass
class TrainerConf:
    """Lightning's side of training: device, precision, steps, batch, schedule, checkpoints, loader."""

    accelerator: str = rule("cpu", lambda v: v in ("cpu", "gpu"), "cpu or gpu")
    devices: int = rule(1, positive_int, "an integer > 0 (more than 1: DDP or FSDP, the global batch split over them)")
    num_nodes: int = rule(1, positive_int, "an integer > 0 (nodes of devices each; under SLURM one task per device)")
    strategy: str = rule("ddp", lambda v: v in ("ddp", "fsdp"),
                         "ddp (replicas) or fsdp (weights, gradients, optimizer state and EMA sharded per block)")
    accumulate_grad_batches: int = rule(1, positive_int, "an integer > 0 (micro-batches per optimizer step)")
    precision: str = rule("32-true", lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
    max_steps: int = rule(1500, positive_int, "an integer > 0")
    batch_size: int = rule(64, positive_int, "an integer > 0 (the global batch)")
    warmup_steps: int = rule(100, nonneg_int, "an integer >= 0 (paper: 1000)")
    grad_clip: Optional[float] = rule(1.0, lambda v: v is None or (number(v) and v > 0), "null or a number > 0")
    val_every: int = rule(250, positive_int, "an integer > 0")
    n_val: int = rule(256, positive_int, "an integer > 0")
    ckpt_every: int = rule(250, positive_int, "an integer > 0")
    keep_checkpoints: int = rule(2, positive_int, "an integer >= 1 (the newest step checkpoints kept; the previous "
                                                  "one goes only once the next is complete)")
    deterministic: bool = True
    num_workers: int = rule(0, nonneg_int, "an integer >= 0")
    compile: bool = False
    threads: Optional[int] = rule(None, lambda v: v is None or positive_int(v), "null or an integer > 0")
    # Sec. 5.3.2: the resolution-dependent shift of the training times (rf variants), as the sampler's sampler.shift
    shift: Any = rule(None, lambda v: v is None or v == "auto" or (number(v) and v > 0),
                      "null (no shift), a number > 0 (paper: 3.0 at 1024^2), or auto: sqrt(m / n) with m, n the pixel "
                      "counts of data.resolution and trainer.shift_base")
    shift_base: Optional[int] = rule(None, lambda v: v is None or positive_int(v),
                                     "null (256, the paper's base resolution) or an integer > 0 (pixels per side)")


@dataclass
class OptimizerConf:
    """AdamW (App. B.3), instantiated with `_partial_` and given the backbone's parameters."""

    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    _convert_: str = "all"
    lr: float = rule(1e-4, lambda v: number(v) and v > 0, "a number > 0 (paper: 1e-4)")
    betas: list = rule(None, lambda v: len(v) == 2 and all(number(b) and 0 <= b < 1 for b in v),
                       "two numbers in [0, 1)", factory=lambda: [0.9, 0.999])
    eps: float = rule(1e-15, lambda v: number(v) and v > 0, "a number > 0 (paper: 1e-15 with QK-norm)")
    weight_decay: float = rule(0.0, lambda v: number(v) and v >= 0, "a number >= 0")


@dataclass
class EMAConf:
    """The paper's EMA (`every`, `decay`: the `ema` weights), and EDM2's post-hoc EMA when `sigma_rels` is set (ema=
    posthoc): power-function EMAs of those lengths updated every step, snapshots of them every `snapshot_every` steps
    (and at the last step) under <run>/checkpoints/posthoc, rebuilt at any length afterwards (rfsweep.cli.posthoc)."""

    every: int = rule(100, positive_int, "an integer > 0 (paper: 100)")
    decay: float = rule(0.99, lambda v: number(v) and 0 <= v < 1, "a number in [0, 1) (paper: 0.99)")
    # null = off (and what a run's config.json from before post-hoc EMA existed holds: such runs resume unchanged)
    sigma_rels: Optional[list] = rule(None, lambda v: v is None or _lengths(v) and len(v) >= 2,
                                      "null (off) or two or more distinct numbers in [0.0001, 0.28] (EDM2: [0.05, "
                                      "0.10])")
    snapshot_every: Optional[int] = rule(None, lambda v: v is None or positive_int(v),
                                         "null or an integer > 0 (steps between post-hoc EMA snapshots)")
    snapshot_dtype: Optional[str] = rule(None, lambda v: v in (None, "float32", "bfloat16", "float16"),
                                         "null (float32), float32, float16 (half the disk; keeps the length signal) or "
                                         "bfloat16 (loses it: docs/posthoc-ema.md)")


@dataclass
class SamplerConf:
    """Euler on the probability-flow ODE, for the run's sample grid (evaluation has its own settings)."""

    steps: int = rule(25, positive_int, "an integer > 0")
    guidance: float = rule(5.0, lambda v: number(v) and v >= 0, "a number >= 0 (classifier-free guidance; 1 = none)")
    shift: float = rule(1.0, lambda v: number(v) and v > 0, "a number > 0 (1.0 = no shift; paper: 3.0 at 1024^2)")
    n_grid: int = rule(64, positive_int, "an integer > 0")


def _settings(v) -> bool:
    return len(v) > 0 and all(len(s) == 2 and positive_int(s[0]) and number(s[1]) and s[1] >= 0 for s in v)


@dataclass
class EvalConf:
    enabled: bool = True
    evaluator: str = rule("embedded", lambda v: v in ("embedded", "openclip", "none"), "embedded, openclip or none")
    n_samples: int = rule(256, positive_int, "an integer > 0 (paper: 1000)")
    batch_size: int = rule(256, positive_int, "an integer > 0")
    weights: list = rule(None, lambda v: len(v) > 0 and all(w in ("ema", "raw") for w in v),
                         "a non-empty subset of [ema, raw]", factory=lambda: ["ema", "raw"])
    settings: Any = rule(None, _settings, "a list of [steps > 0, guidance >= 0] pairs", factory=list)
    seed: int = rule(0, nonneg_int, "an integer >= 0")
    evaluator_args: dict = field(default_factory=dict)
    # post-hoc EMA lengths (sigma_rel) evaluated beside `weights`, each rebuilt at the evaluated step from the run's
    # snapshots (ema=posthoc) and written as weights phema<sigma_rel>; `analysis rank-table --ema best` picks each
    # run's length per setting by `ema_select` on half the prompts and reports the other half
    ema_lengths: list = rule(None, _lengths, "distinct numbers in [0.0001, 0.28] (sigma_rel), or []", factory=list)
    ema_select: str = rule("fid", lambda v: v in metric_names(), f"a registered metric ({', '.join(metric_names())})")
    bf16: bool = True  # on a GPU, sample under bf16 autocast with TF32 matmuls (ignored on a CPU)


@dataclass
class RungConf:
    """A race's rung (`hydra/sweeper=race`, `rfsweep.run.race_control`): this launch trains to `stop_at` and
    evaluates there, with `samples` per setting of `settings` and `weights`, into the run folder's rungs/<stop_at>/;
    the next launch of the same run continues from that checkpoint. Not part of the run's identity."""

    stop_at: Optional[int] = rule(None, lambda v: v is None or positive_int(v),
                                  "null (train to trainer.max_steps) or an integer > 0 (the rung's step)")
    samples: int = rule(200, positive_int, "an integer > 0 (samples per setting at a rung)")
    settings: Any = rule(None, _settings, "a list of [steps > 0, guidance >= 0] pairs",
                         factory=lambda: [[10, 5.0], [25, 5.0]])
    weights: list = rule(None, lambda v: len(v) > 0 and all(w in ("ema", "raw") for w in v),
                         "a non-empty subset of [ema, raw]", factory=lambda: ["ema"])


@dataclass
class DataConf:
    name: str = MISSING  # the reader: an embedded set, a raw reader, or precomputed
    label: str = MISSING  # what runs, results and dashboards call this dataset
    path: Optional[str] = None
    resolution: int = rule(8, positive_int, "an integer > 0")
    seed: int = rule(0, nonneg_int, "an integer >= 0")


@dataclass
class ConditioningConf:
    repo: Optional[str] = None  # a diffusers repo (hub name or folder) whose subfolders hold the encoders (sd3)
    dtype: str = rule("float32", lambda v: v in ("float32", "bfloat16", "float16"),
                      "float32, bfloat16 or float16 (the frozen text encoders' weights)")
    drop_prob: float = rule(0.464, lambda v: number(v) and 0 <= v <= 1, "a number in [0, 1] (paper: 0.464)")
    cache: bool = True
    context_dim: int = rule(MISSING, positive_int, "an integer > 0")
    pooled_dim: int = rule(MISSING, nonneg_int, "an integer >= 0")
    clip_tokens: int = rule(MISSING, nonneg_int, "an integer >= 0")
    encoders: list = field(default_factory=list)


@dataclass
class IdentityAutoencoderConf:
    _target_: str = "rfsweep.autoencoders.IdentityAutoencoder"
    channels: int = 3
    shift: float = 0.0
    scale: float = rule(1.0, lambda v: number(v) and v > 0, "a number > 0")
    latent_channels: int = 3
    downsample: int = 1


@dataclass
class VAEConf:
    _target_: str = "rfsweep.autoencoders.DiffusersVAE"
    name: str = MISSING
    subfolder: Optional[str] = None
    shift: float = 0.0
    scale: float = rule(1.0, lambda v: number(v) and v > 0, "a number > 0")
    latent_channels: int = rule(MISSING, positive_int, "an integer > 0")
    downsample: int = rule(MISSING, positive_int, "an integer > 0")


@dataclass
class BackboneBase:
    in_channels: int = "${autoencoder.latent_channels}"  # type: ignore[assignment]
    context_dim: int = "${conditioning.context_dim}"  # type: ignore[assignment]
    pooled_dim: int = "${conditioning.pooled_dim}"  # type: ignore[assignment]
    grad_checkpointing: bool = False
    label: str = MISSING  # how runs and results name this backbone (config only)


def _size(v) -> bool:
    return v is None or positive_int(v)


@dataclass
class TransformerConf(BackboneBase):
    """DiT, CrossDiT, UViT (and MM-DiT below): the paper's size rule is width 64 depth, heads = depth (null)."""

    _target_: str = "rfsweep.backbones.build_backbone"
    name: str = MISSING
    depth: int = rule(2, positive_int, "an integer > 0")
    width: Optional[int] = rule(64, _size, "null (64 x depth) or an integer > 0")
    heads: Optional[int] = rule(2, _size, "null (depth) or an integer > 0")
    mlp_ratio: float = rule(4.0, lambda v: number(v) and v > 0, "a number > 0")
    patch_size: int = rule(2, positive_int, "an integer > 0")
    pos_embed_max_size: int = rule(96, positive_int, "an integer > 0")
    qk_norm: bool = False


@dataclass
class MMDiTConf(TransformerConf):
    weight_sets: int = rule(2, lambda v: v in (2, 3), "2 (text, image) or 3 (CLIP, T5, image)")
    clip_tokens: int = "${conditioning.clip_tokens}"  # type: ignore[assignment]


@dataclass
class MLPConf(BackboneBase):
    _target_: str = "rfsweep.backbones.build_backbone"
    name: str = "mlp"
    depth: int = rule(2, positive_int, "an integer > 0")
    width: int = rule(176, positive_int, "an integer > 0")
    mlp_ratio: float = rule(2.0, lambda v: number(v) and v > 0, "a number > 0")
    input_size: int = rule(8, positive_int, "an integer > 0")
    # c(t, c_vec) x added to the output (conf/backbone/mlp.yaml turns it on); off by default, here as in MLPDenoiser,
    # so a run's config.json that predates the key still builds the network its weights were trained with
    skip: bool = False


@dataclass
class SD3Conf(BackboneBase):
    _target_: str = "rfsweep.backbones.pretrained.load_sd3"
    name: str = MISSING  # hub name in the local cache, or a diffusers folder
    subfolder: Optional[str] = "transformer"


@dataclass
class LoggerConf:
    csv: bool = True
    wandb: bool = True
    project: str = "rfsweep"
    entity: Optional[str] = None


@dataclass
class ClusterConf:
    """How a job behaves on a cluster (README "Sweeps and clusters")."""

    requeue: bool = True  # plain sbatch: after the pre-emption checkpoint, scontrol requeue (submitit: its own)
    max_requeues: int = rule(20, nonneg_int, "an integer >= 0")  # plain sbatch: restarts (SLURM_RESTART_COUNT)
    lease_timeout_s: float = rule(600.0, lambda v: number(v) and v >= 10, "a number of seconds >= 10")
    # how long the ranks of a launch wait for each other to be ready to train (rfsweep.cluster.ranks)
    start_timeout_s: float = rule(600.0, lambda v: number(v) and v > 0, "a number of seconds > 0")
    # a rank that died without a word on another host: its heartbeat file older than this ends the job's other ranks
    # (on one host a dead rank's pid is noticed within a second)
    peer_timeout_s: float = rule(60.0, lambda v: number(v) and v >= 5, "a number of seconds >= 5")
    # how long a collective may wait (the process group's timeout): longer than the slowest gap between two
    # collectives of one step (a checkpoint written by rank 0, a validation)
    collective_timeout_s: float = rule(600.0, lambda v: number(v) and v >= 30, "a number of seconds >= 30")
    tflops_per_gpu: float = rule(400.0, lambda v: number(v) and v > 0, "a number > 0 (achieved TFLOP/s per GPU)")
    gpu_memory_gb: float = rule(80.0, lambda v: number(v) and v > 0, "a number > 0 (memory of one GPU, for the plan)")


@dataclass
class PathsConf:
    runs: str = "${oc.env:RFSWEEP_RUNS,runs}"  # single runs
    sweeps: str = "${oc.env:RFSWEEP_SWEEPS,multirun}"  # multiruns
    cache: str = "${oc.env:RFSWEEP_CACHE,${oc.env:HOME}/.cache/rfsweep}"


# (group, schema name) -> schema. The name is what a group's YAML lists first in its defaults.
SCHEMAS: dict[tuple[str | None, str], type] = {
    (None, "rfsweep_schema"): RootConf,
    ("trainer", "trainer_schema"): TrainerConf,
    ("optimizer", "optimizer_schema"): OptimizerConf,
    ("ema", "ema_schema"): EMAConf,
    ("sampler", "sampler_schema"): SamplerConf,
    ("eval", "eval_schema"): EvalConf,
    ("data", "data_schema"): DataConf,
    ("conditioning", "conditioning_schema"): ConditioningConf,
    ("autoencoder", "identity_schema"): IdentityAutoencoderConf,
    ("autoencoder", "vae_schema"): VAEConf,
    ("backbone", "transformer_schema"): TransformerConf,
    ("backbone", "mmdit_schema"): MMDiTConf,
    ("backbone", "mlp_schema"): MLPConf,
    ("backbone", "sd3_schema"): SD3Conf,
    ("logger", "logger_schema"): LoggerConf,
    ("cluster", "default"): ClusterConf,
    ("paths", "default"): PathsConf,
    ("rung", "default"): RungConf,
}


def register_schemas() -> None:
    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=group, name=name, node=node)


def rules_for(group: str | None, node=None) -> dict[str, tuple[Callable, str]]:
    """key -> (check, allowed) of the schema `node` follows: its own type when composed onto a schema, else the
    group's schema whose checked keys the node has most of (a backbone's keys depend on which backbone it is)."""
    def rules(cls) -> dict:
        return {f.name: (f.metadata["check"], f.metadata["allowed"]) for f in fields(cls) if "check" in f.metadata}

    classes = [cls for (g, _), cls in SCHEMAS.items() if g == group]
    typed = OmegaConf.get_type(node) if OmegaConf.is_config(node) else None
    if typed in classes:
        return rules(typed)
    if node is None:
        return {k: v for cls in reversed(classes) for k, v in rules(cls).items()}
    return max((rules(cls) for cls in classes), key=lambda r: (sum(k in node for k in r), -len(r)))


# Keys that moved, by their old names: a command written for an earlier schema is told, in one line, where the key
# lives now (Hydra would only say that the old key is not in the group's schema).
MOVED_KEYS = {
    "trainer.lr": "optimizer.lr", "trainer.betas": "optimizer.betas", "trainer.eps": "optimizer.eps",
    "trainer.weight_decay": "optimizer.weight_decay", "trainer.ema.every": "ema.every",
    "trainer.ema.decay": "ema.decay", "sampler.cfg": "sampler.guidance",
}


def moved_key(overrides: list[str]) -> str | None:
    """The error line for the first command-line override that names a moved key, else None."""
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if sep and key in MOVED_KEYS:
            new = MOVED_KEYS[key]
            return f"config error: {key} is no longer a key: it moved to {new} (allowed: {new}={value})"
    return None
