"""Config validation: every value is checked before any compute; a bad one fails with one line that names the key and
what is allowed. The rules live on the schema's fields (`rfsweep.run.schema`); cross-field rules are here. (Formulation
names are checked by `rfsweep.formulations`; the memory plans and data checks by `rfsweep.run.preflight`.)"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from rfsweep.data import dataset_names, needs_path
from rfsweep.errors import ConfigError
from rfsweep.run.schema import rules_for

GROUPS = (None, "trainer", "optimizer", "ema", "sampler", "eval", "data", "conditioning", "autoencoder", "backbone",
          "logger", "cluster", "paths", "rung")


def validate(cfg: DictConfig, plan: bool = False) -> None:
    """Raise ConfigError for the first value out of range, then for the first cross-key rule broken. (The memory
    plans and the data checks follow in `rfsweep.run.preflight`.) `plan`: a dry run's config, which may leave the
    data set's folder unset (a plan made away from the data)."""
    for group in GROUPS:
        node = cfg if group is None else cfg.get(group)
        if node is None:
            raise ConfigError(f"config error: the config has no {group!r} group (allowed: conf/config.yaml's groups)")
        for key, (check, allowed) in rules_for(group, node).items():
            where = key if group is None else f"{group}.{key}"
            if key not in node:
                raise ConfigError(f"config error: {where} is missing (allowed: a value that is {allowed})")
            value = node[key]
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
            try:
                good = check(value)
            except TypeError:
                good = False
            if not good:
                raise ConfigError(f"config error: {where}={value!r} is out of range (allowed: {allowed})")
    _cross_checks(cfg, plan)


def _check_width(b: DictConfig) -> None:
    """A transformer's width splits into its heads and into 2D sin-cos positions (a multiple of 4), before any
    backbone is built (the paper's size rule: width 64 x depth, heads = depth, where they are null)."""
    if "heads" not in b or "depth" not in b:
        return
    width = b.width if b.width is not None else 64 * b.depth
    heads = b.heads if b.heads is not None else b.depth
    step = math.lcm(int(heads), 4)
    if width % step:
        below, above = width // step * step, (width // step + 1) * step
        near = f"{below} or {above}" if below else f"{above}"
        raise ConfigError(f"config error: backbone.width={width} does not split into backbone.heads={heads} heads and "
                          f"2D sin-cos positions (allowed: a multiple of {step}, e.g. {near}; or null: 64 x depth)")


def _cross_checks(cfg: DictConfig, plan: bool) -> None:
    tr = cfg.trainer
    parts = tr.devices * tr.num_nodes * tr.accumulate_grad_batches
    if tr.batch_size % parts:
        raise ConfigError(f"config error: trainer.batch_size={tr.batch_size} does not split over trainer.devices="
                          f"{tr.devices} x trainer.num_nodes={tr.num_nodes} x trainer.accumulate_grad_batches="
                          f"{tr.accumulate_grad_batches} (allowed: a multiple of {parts}; the batch is global)")
    if cfg.data.name not in dataset_names():
        raise ConfigError(f"config error: data.name={cfg.data.name!r} is unknown "
                          f"(allowed: {', '.join(dataset_names())})")
    if needs_path(cfg.data.name) and not cfg.data.path and not plan:
        raise ConfigError(f"config error: data.path is not set for data {cfg.data.label!r} (data.name="
                          f"{cfg.data.name}; allowed: its folder, as data.path=... or the environment variable its "
                          f"conf/data YAML names)")
    if cfg.ema.sigma_rels and not cfg.ema.snapshot_every:
        raise ConfigError(f"config error: ema.snapshot_every={cfg.ema.snapshot_every} with ema.sigma_rels="
                          f"{list(cfg.ema.sigma_rels)} (allowed: an integer > 0, the steps between post-hoc EMA "
                          f"snapshots)")
    if cfg.ema.sigma_rels and str(tr.precision) in ("bf16-true", "16-true"):
        raise ConfigError(f"config error: trainer.precision={tr.precision} with ema.sigma_rels (allowed: a mixed "
                          f"precision such as bf16-mixed, or 32-true: the post-hoc EMAs' per-step update "
                          f"(gamma + 1) / t falls below 16-bit resolution)")
    if cfg.eval.ema_lengths and not cfg.ema.sigma_rels:
        raise ConfigError(f"config error: eval.ema_lengths={list(cfg.eval.ema_lengths)} without post-hoc EMA "
                          f"snapshots (allowed: [] or with ema=posthoc / ema.sigma_rels=[...])")
    if cfg.eval.enabled and cfg.eval.evaluator == "none":
        raise ConfigError("config error: eval.enabled=true with eval.evaluator=none (allowed: an evaluator, embedded "
                          "or openclip, or eval.enabled=false; e.g. eval=embedded or eval=none)")
    if cfg.rung.stop_at is not None and cfg.eval.evaluator == "none":
        raise ConfigError(f"config error: rung.stop_at={cfg.rung.stop_at} with eval.evaluator=none (allowed: an "
                          f"evaluator, embedded or openclip: a rung evaluates the run there; e.g. eval=embedded)")
    if cfg.rung.stop_at is not None and cfg.rung.stop_at > tr.max_steps:
        raise ConfigError(f"config error: rung.stop_at={cfg.rung.stop_at} is beyond trainer.max_steps={tr.max_steps} "
                          f"(allowed: null or an integer in [1, {tr.max_steps}])")
    _check_width(cfg.backbone)
    res, ds = cfg.data.resolution, getattr(cfg.autoencoder, "downsample", 1)
    patch = OmegaConf.select(cfg, "backbone.patch_size", default=1) or 1
    if (res // ds) % patch:
        raise ConfigError(f"config error: data.resolution={res} gives a latent grid of {res // ds}, not divisible "
                          f"by backbone.patch_size={patch} (allowed: resolution / {ds} divisible by {patch})")
