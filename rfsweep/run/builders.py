"""Builders: the one place a config becomes objects (conditioner, autoencoder, backbone, module, data). The app,
`precompute` and `generate` import them from here; nothing here trains or writes a run folder. The composition of
every config (`rfsweep.run.preflight`, `--help` included) imports this module: what imports torch or Lightning is
imported where an object is built."""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import nullcontext
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rfsweep.cluster.ranks import process_rank
from rfsweep.data import build_dataset
from rfsweep.errors import ConfigError
from rfsweep.formulations import build_formulation

AE_KEYS = ("latent_channels", "downsample")  # config-only keys of the autoencoder group
BACKBONE_KEYS = ("label",)  # config-only keys of the backbone group


def formulation_spec(node):
    """What `build_formulation` takes, from a formulation config node (`variant: <name>` or family + parameters)."""
    spec = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return spec["variant"] if isinstance(spec, dict) and "variant" in spec else spec


def variant_name(node) -> str:
    """Canonical paper name of a formulation config node."""
    return build_formulation(formulation_spec(node)).name


def train_shift(cfg: DictConfig) -> float:
    """alpha of the training times (Sec. 5.3.2): trainer.shift; auto: sqrt(m / n) for m, n the pixel counts of
    data.resolution and trainer.shift_base (256 when null); 1 when null."""
    shift = cfg.trainer.get("shift")
    if shift is None:
        return 1.0
    if shift == "auto":
        base = cfg.trainer.get("shift_base") or 256
        return math.sqrt(int(cfg.data.resolution) ** 2 / int(base) ** 2)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or shift <= 0:
        raise ConfigError(f"config error: trainer.shift={shift!r} is out of range (allowed: null, a number > 0 or "
                          f"auto)")
    return float(shift)


def formulation_for(cfg: DictConfig):
    """The config's formulation, its training times shifted by `train_shift(cfg)`."""
    spec, alpha = formulation_spec(cfg.formulation), train_shift(cfg)
    if alpha != 1.0:
        plain = build_formulation(spec)
        if plain.family != "rf":
            raise ConfigError(f"config error: trainer.shift={cfg.trainer.shift} (alpha {alpha:g}) shifts the training "
                              f"times of rf variants; {plain.name} is of the {plain.family} family (allowed: null)")
    return build_formulation(spec, shift=alpha)


def _instantiate(node: DictConfig, config_only: tuple[str, ...]):
    """`instantiate` a group's node without the keys that only other config entries read."""
    values = OmegaConf.to_container(node, resolve=True)
    return instantiate({k: v for k, v in values.items() if k not in config_only})


def build_conditioner(cfg: DictConfig):
    from rfsweep.conditioning import Conditioner  # deferred: torch (~1.5 s), not needed by --help

    c = cfg.conditioning
    lazy = cfg.data.name == "precomputed"  # training reads embeddings: encoders only for evaluation prompts

    def encoder(e):
        if str(e._target_).endswith("HFTextEncoder"):
            return instantiate(e, dtype=str(c.dtype), lazy=lazy)
        return instantiate(e)

    cond = Conditioner([encoder(e) for e in c.encoders], drop_prob=c.drop_prob, cache=c.cache)
    for key in ("context_dim", "pooled_dim", "clip_tokens"):
        if getattr(cond, key) != c[key]:
            raise ConfigError(f"config error: conditioning.{key}={c[key]} but its encoders give {getattr(cond, key)} "
                              f"(allowed: {getattr(cond, key)})")
    return cond


def build_autoencoder(cfg: DictConfig):
    return _instantiate(cfg.autoencoder, AE_KEYS)


def build_backbone(cfg: DictConfig):
    return _instantiate(cfg.backbone, BACKBONE_KEYS)


def latent_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """(C, H, W) of the latents the backbone sees."""
    side = cfg.data.resolution // cfg.autoencoder.downsample
    return int(cfg.autoencoder.latent_channels), side, side


def build_data(cfg: DictConfig):
    from rfsweep.data.datamodule import DataModule  # deferred: lightning (~3 s), not needed by --help or a dry run

    tr = cfg.trainer
    return DataModule(name=cfg.data.name, batch_size=tr.batch_size, max_steps=tr.max_steps,
                      resolution=cfg.data.resolution, seed=cfg.seed, path=cfg.data.path, n_val=tr.n_val,
                      num_workers=tr.num_workers, data_seed=cfg.data.seed, accumulate=tr.accumulate_grad_batches,
                      expect=encoding(cfg))


def encoding(cfg: DictConfig) -> dict | None:
    """The encoding a pre-encoded folder must have been written with for this config (None for other data)."""
    return encoding_signature(cfg) if cfg.data.name == "precomputed" else None


def encoding_signature(cfg: DictConfig) -> dict:
    """What an encoding depends on, from a config: the autoencoder, the text encoders and their widths and dtype,
    the resolution. `precompute` writes it into a folder's plan; training checks the folder's plan against it."""
    ae = OmegaConf.to_container(cfg.autoencoder, resolve=True)
    c = OmegaConf.to_container(cfg.conditioning, resolve=True)
    return {"autoencoder": ae, "resolution": int(cfg.data.resolution),
            "conditioning": {k: c.get(k) for k in ("encoders", "context_dim", "pooled_dim", "clip_tokens", "dtype")}}


def build_module(cfg: DictConfig, formulation=None, train: bool = False):
    """Everything a run needs, built from the config (encoders loaded, nothing trained). `train`: for training,
    where FSDP over several ranks builds the whole backbone on rank 0 only (`DiffusionModule.configure_model`)."""
    import lightning as L  # deferred: lightning (~3 s), not needed by --help or a dry run

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_data(cfg)
    return build_model(cfg, formulation, warm=lambda conditioner: warm_captions(cfg, conditioner, data),
                       train=train), data


def build_model(cfg: DictConfig, formulation=None, warm=None, train: bool = False):
    """The DiffusionModule of a config without its data (e.g. to sample from a finished run's checkpoint)."""
    import torch  # deferred: torch (~1.5 s), not needed by --help

    from rfsweep.train.diffusion_module import DiffusionModule  # deferred: lightning (~3 s), not needed by --help
    from rfsweep.types import RunMeta  # deferred: torch, not needed by --help

    formulation = formulation or formulation_for(cfg)
    tr = cfg.trainer
    shard = train and tr.strategy == "fsdp" and int(tr.devices) * int(tr.num_nodes) > 1
    with torch.device("meta") if shard and process_rank() != 0 else nullcontext():
        net = build_backbone(cfg)
    meta = RunMeta(formulation.name, formulation.family, str(cfg.data.label), str(cfg.backbone.label), int(cfg.seed),
                   latent_shape(cfg), encodes_online=cfg.data.name != "precomputed",
                   config=OmegaConf.to_container(cfg, resolve=True))
    optimizer = instantiate(cfg.optimizer)  # a partial: AdamW(params) (conf/optimizer, _partial_)
    conditioner = build_conditioner(cfg)
    if warm is not None:
        warm(conditioner)
    return DiffusionModule(net, formulation, conditioner, build_autoencoder(cfg), optimizer, int(tr.warmup_steps),
                           dict(cfg.ema), cfg.seed, meta, shard=shard)


def warm_captions(cfg: DictConfig, conditioner, data) -> None:
    """Encode an embedded dataset's whole caption vocabulary once (cached on disk, shared by a sweep)."""
    if not (cfg.conditioning.cache and callable(getattr(data.train, "captions", None))):
        return
    test = build_dataset(cfg.data.name, "test", cfg.data.resolution, cfg.data.seed, cfg.data.path)
    captions = sorted({*data.train.captions(), *data.val.captions(), *test.captions()})
    enc = json.dumps(OmegaConf.to_container(cfg.conditioning.encoders, resolve=True), sort_keys=True)
    key = hashlib.sha1(f"{enc}|{cfg.data.name}|{cfg.data.seed}".encode()).hexdigest()[:16]
    conditioner.warm(captions, Path(cfg.paths.cache) / "embeddings" / f"{key}.pt")


def context_len(cfg: DictConfig) -> int:
    """Text tokens the backbone sees, from the config alone (no encoder loaded): the 'clip' encoders share their
    tokens (channel concatenation), 't5' encoders append theirs (as `Conditioner.context_len`)."""
    encoders = OmegaConf.to_container(cfg.conditioning.encoders, resolve=True)
    t5 = sum(int(e.get("max_length", 0)) for e in encoders if e.get("kind") == "t5")
    return int(cfg.conditioning.clip_tokens) + t5
