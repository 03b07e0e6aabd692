"""Config validation: every value is checked before any compute; a bad one fails with one line that
names the key and what is allowed. (Formulation names are checked by `rfsweep.formulations`.)"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")


class ConfigError(ValueError):
    pass


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _nonneg_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


RULES: dict[str, tuple] = {
    "seed": (_nonneg_int, "an integer >= 0"),
    "trainer.max_steps": (_positive_int, "an integer > 0"),
    "trainer.batch_size": (_positive_int, "an integer > 0"),
    "trainer.lr": (lambda v: _num(v) and v > 0, "a number > 0 (paper: 1e-4)"),
    "trainer.betas": (lambda v: len(v) == 2 and all(_num(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "trainer.eps": (lambda v: _num(v) and v > 0, "a number > 0 (paper: 1e-15 with QK-norm)"),
    "trainer.weight_decay": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "trainer.warmup_steps": (_nonneg_int, "an integer >= 0 (paper: 1000)"),
    "trainer.grad_clip": (lambda v: v is None or (_num(v) and v > 0), "null or a number > 0"),
    "trainer.precision": (lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "trainer.accelerator": (lambda v: v in ("cpu", "gpu"), "cpu or gpu"),
    "trainer.devices": (_positive_int, "an integer > 0 (more than 1: DDP, the global batch split over devices)"),
    "trainer.val_every": (_positive_int, "an integer > 0"),
    "trainer.n_val": (_positive_int, "an integer > 0"),
    "trainer.ckpt_every": (_positive_int, "an integer > 0"),
    "trainer.ema.every": (_positive_int, "an integer > 0 (paper: 100)"),
    "trainer.ema.decay": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1) (paper: 0.99)"),
    "trainer.num_workers": (_nonneg_int, "an integer >= 0"),
    "cluster.requeue": (lambda v: isinstance(v, bool), "true or false"),
    "cluster.max_requeues": (_nonneg_int, "an integer >= 0"),
    "cluster.lease_timeout_s": (lambda v: _num(v) and v >= 10, "a number of seconds >= 10"),
    "cluster.tflops_per_gpu": (lambda v: _num(v) and v > 0, "a number > 0 (achieved TFLOP/s per GPU)"),
    "conditioning.drop_prob": (lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1] (paper: 0.464)"),
    "data.resolution": (_positive_int, "an integer > 0"),
    "data.seed": (_nonneg_int, "an integer >= 0"),
    "sampler.steps": (_positive_int, "an integer > 0"),
    "sampler.cfg": (lambda v: _num(v) and v >= 0, "a number >= 0 (1.0 = no guidance)"),
    "sampler.shift": (lambda v: _num(v) and v > 0, "a number > 0 (1.0 = no shift; paper: 3.0 at 1024^2)"),
    "sampler.n_grid": (_positive_int, "an integer > 0"),
    "eval.n_samples": (_positive_int, "an integer > 0 (paper: 1000)"),
    "eval.batch_size": (_positive_int, "an integer > 0"),
    "eval.weights": (lambda v: len(v) > 0 and all(w in ("ema", "raw") for w in v), "a non-empty subset of [ema, raw]"),
    "eval.settings": (lambda v: len(v) > 0 and all(len(s) == 2 and _positive_int(s[0]) and _num(s[1]) and s[1] >= 0
                                                   for s in v), "a list of [steps > 0, cfg >= 0] pairs"),
}


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value out of range."""
    for key, (ok, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, throw_on_missing=False, default="__absent__")
        if isinstance(value, str) and value == "__absent__":
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"config error: {key}={value!r} is out of range (allowed: {allowed})")
    tr = cfg.trainer
    if tr.batch_size % tr.devices:
        raise ConfigError(f"config error: trainer.batch_size={tr.batch_size} does not split over "
                          f"trainer.devices={tr.devices} (allowed: a multiple of {tr.devices}; the batch is global)")
    res, ds = cfg.data.resolution, getattr(cfg.autoencoder, "downsample", 1)
    patch = OmegaConf.select(cfg, "backbone.patch_size", default=1) or 1
    if (res // ds) % patch:
        raise ConfigError(f"config error: data.resolution={res} gives a latent grid of {res // ds}, not divisible "
                          f"by backbone.patch_size={patch} (allowed: resolution / {ds} divisible by {patch})")
