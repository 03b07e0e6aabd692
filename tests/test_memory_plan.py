"""The memory plan: its activation count is what autograd saves on a real forward pass; its state terms follow the
strategy; a config that cannot fit its GPUs (the paper's depth 38 under DDP on 80 GB) is refused before any job."""

from __future__ import annotations

import pytest
import torch

from rfsweep.config import ConfigError, validate
from rfsweep.memory import _saved_bytes, memory_plan
from tests.helpers import compose_cfg

PAPER = ["trainer=gpu", "optimizer=adamw", "ema=paper", "conditioning=sd3", "autoencoder=sd3_vae",
         "data.resolution=256", "backbone.width=null", "backbone.heads=null", "backbone.qk_norm=true"]


def test_activation_count_on_meta_is_what_a_real_forward_saves():
    from rfsweep.backbones import build_backbone

    kw = dict(in_channels=4, context_dim=32, pooled_dim=16, depth=3, width=64, heads=2)
    with torch.device("meta"):
        meta = build_backbone("mmdit", **kw)
    counted = _saved_bytes(meta, (4, 8, 8), 6, 32, 16)
    real = build_backbone("mmdit", **kw)
    params = {id(p) for p in real.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if id(t) not in params and not (t._base is not None and id(t._base) in params):
            total += t.numel() * t.element_size()
        return t

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), sdpa_kernel(SDPBackend.MATH):
        real(torch.randn(1, 4, 8, 8), torch.rand(1), torch.randn(1, 6, 32), torch.randn(1, 16)).sum().backward()
    assert counted[0] == total and 0 < counted[1] < total  # the meta device runs the math attention too


def test_strategy_and_checkpointing_shrink_the_plan():
    cfg = compose_cfg([*PAPER, "backbone.depth=24", "trainer.batch_size=64"])
    ddp = memory_plan(cfg)
    assert ddp.params == pytest.approx(2.03e9, rel=0.01) and ddp.weights == 4 * ddp.params
    assert ddp.optimizer == 8 * ddp.params and ddp.micro_batch == 64
    fsdp = memory_plan(compose_cfg([*PAPER, "backbone.depth=24", "trainer.batch_size=64", "trainer.strategy=fsdp",
                                    "trainer.devices=8"]))
    assert fsdp.optimizer == pytest.approx(ddp.optimizer / 8) and fsdp.micro_batch == 8
    ckpt = memory_plan(compose_cfg([*PAPER, "backbone.depth=24", "trainer.batch_size=64",
                                    "backbone.grad_checkpointing=true"]))
    assert ckpt.activations < ddp.activations / 4


def test_a_config_that_cannot_fit_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:  # depth 38 (8B) under DDP: 20 bytes per parameter is 160 GB alone
        validate(compose_cfg([*PAPER, "backbone.depth=38"]))
    msg = str(e.value)
    assert "memory plan" in msg and "80 GB" in msg and "trainer.strategy=fsdp" in msg and "\n" not in msg
    validate(compose_cfg([*PAPER, "backbone.depth=38", "trainer.strategy=fsdp", "trainer.devices=8",
                          "trainer.num_nodes=8", "backbone.grad_checkpointing=true"]))  # 64 GPUs, sharded: fits
