"""SD3's real transformer as an rfsweep MM-DiT: `backbone=sd3_medium` fine-tunes or evaluates SD3's weights.

Reads a diffusers `SD3Transformer2DModel` folder (a hub name in the local Hugging Face cache, or a path; never the
network) and converts it with `from_diffusers`, exactly (test `tests/test_backbones.py`). The input sizes the rest
of the config implies (the autoencoder's latent channels, the conditioning's widths) are checked against the
checkpoint's config before its weights are read.
"""

from __future__ import annotations

from rfsweep.backbones.mmdit import MMDiT, from_diffusers
from rfsweep.errors import ConfigError
from rfsweep.text_encoders import from_local


def load_sd3(name: str, subfolder: str | None = "transformer", in_channels: int | None = None,
             context_dim: int | None = None, pooled_dim: int | None = None,
             grad_checkpointing: bool = False) -> MMDiT:
    from diffusers import SD3Transformer2DModel  # deferred: diffusers (seconds), only SD3's pretrained weights

    config = from_local(SD3Transformer2DModel.load_config, name, "backbone.name", "a local diffusers folder",
                        subfolder=subfolder)
    expected = {"in_channels": (in_channels, "autoencoder.latent_channels"),
                "joint_attention_dim": (context_dim, "conditioning.context_dim"),
                "pooled_projection_dim": (pooled_dim, "conditioning.pooled_dim")}
    for key, (want, source) in expected.items():
        if want is not None and config[key] != want:
            raise ConfigError(f"config error: {source}={want} but backbone.name={name!r} takes {key}={config[key]} "
                              f"(allowed: {config[key]}; SD3 needs conditioning=sd3 autoencoder=sd3_vae)")
    model = from_local(SD3Transformer2DModel.from_pretrained, name, "backbone.name", "a local diffusers folder",
                       subfolder=subfolder)  # a config without its weights fails here, with the same one line
    net = from_diffusers(model)
    net.grad_checkpointing = grad_checkpointing
    return net
