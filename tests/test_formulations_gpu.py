"""Device smoke test: every variant trains and samples on CUDA (tensors, tables and generators on device)."""

import pytest
import torch

from rfsweep.formulations import ALL_VARIANTS, VALIDATION_T, build_formulation
from rfsweep.sampling import sample
from rfsweep.types import Cond

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_variant_on_cuda(name):
    dev = torch.device("cuda")
    f = build_formulation(name)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, device=dev)

    def net(x, t, context, pooled):
        return conv(x) * (1 + t.reshape(-1, 1, 1, 1)) + pooled.mean(1).reshape(-1, 1, 1, 1)

    g = torch.Generator(device=dev).manual_seed(0)
    x0 = torch.randn(64, 4, 8, 8, device=dev, generator=g)
    cond = Cond(torch.randn(64, 7, 16, device=dev), torch.randn(64, 16, device=dev))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = f.loss(net, x0, cond, generator=g)
    assert loss.device.type == "cuda" and loss.dtype == torch.float32 and torch.isfinite(loss).all()
    loss.mean().backward()
    assert torch.isfinite(conv.weight.grad).all()
    for t in VALIDATION_T:
        assert torch.isfinite(f.loss(net, x0, cond, t=t, eps=x0)).all()
    out = sample(f, net, torch.randn(2, 4, 8, 8, device=dev), Cond(cond.context[:2], cond.pooled[:2]),
                 uncond=Cond(torch.zeros_like(cond.context[:1]), torch.zeros_like(cond.pooled[:1])),
                 steps=5, guidance=2.5, shift=3.0)
    assert out.device.type == "cuda" and torch.isfinite(out).all()
