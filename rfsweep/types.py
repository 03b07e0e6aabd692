"""The small data contracts every piece shares.

Time convention (Sec. 2 of the paper, used everywhere in rfsweep): ``t = 0`` is data, ``t = 1`` is noise,
``z_t = a_t x0 + b_t eps``. Backbones receive the *rectified-flow time* ``t = b / (a + b)`` of the path
point they see (identical to the formulation's own ``t`` for rectified flow), so one backbone serves every
formulation and pretrained SD3 weights, trained on the rectified-flow path, keep their meaning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import torch


class Cond(NamedTuple):
    """Conditioning for one batch.

    context: (B, L, D_ctx) token states; pooled: (B, D_vec) pooled vector.
    """

    context: torch.Tensor
    pooled: torch.Tensor


class Batch(NamedTuple):
    """What training consumes, whether encoded online or read pre-encoded.

    latents: (B, C, H, W) autoencoder latents (or pixels for the identity autoencoder);
    context: (B, L, D_ctx); pooled: (B, D_vec).
    """

    latents: torch.Tensor
    context: torch.Tensor
    pooled: torch.Tensor

    @property
    def cond(self) -> Cond:
        return Cond(self.context, self.pooled)


@runtime_checkable
class Backbone(Protocol):
    """The contract of every backbone (``rfsweep.backbones``): ``net(x, t, context, pooled)`` -> tensor like ``x``.

    x: (N, C, H, W); t: (N,) rectified-flow time in [0, 1]; context: (N, L, D_ctx); pooled: (N, D_vec).
    A backbone knows nothing of formulations; what its output means is the formulation's business.
    """

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 pooled: torch.Tensor) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True): ...


@dataclass(frozen=True)
class RunMeta:
    """What a run is, beside its weights: the names its results and W&B run carry, and what sampling needs to know.
    Checkpoints keep it as a plain dict (`to_dict`), so they load with `torch.load(weights_only=True)`."""

    variant: str  # the formulation's paper name, e.g. rf/lognorm(0.00, 1.00)
    family: str  # rf, edm, eps, v
    dataset: str  # the data config's label
    backbone: str  # the backbone config's label
    seed: int
    latent_shape: tuple[int, int, int]  # (C, H, W) of what the backbone sees
    encodes_online: bool = True  # False on pre-encoded data: the frozen encoders stay off the GPU while training
    config: dict = field(default_factory=dict)  # the resolved run config

    def to_dict(self) -> dict:
        return {**asdict(self), "latent_shape": list(self.latent_shape)}

    @classmethod
    def from_dict(cls, d: dict) -> RunMeta:
        return cls(**{**d, "latent_shape": tuple(d["latent_shape"])})
