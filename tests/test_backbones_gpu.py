"""CUDA checks of the backbones (scripts/gpu_check.sh): bf16 training step, exactness against diffusers."""

import pytest
import torch

from rfsweep.backbones import from_diffusers
from tests.test_backbones import DIFFUSERS_CONFIGS, NAMES, diffusers_model, inputs, rel_err, tiny

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("name", NAMES)
def test_bf16_train_step_cuda(name):
    net = tiny(name, qk_norm=name != "mlp").cuda()
    x, t, c, v = (a.cuda() for a in inputs(n=4))
    ref = net(x, t, c, v)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x, t, c, v)
        loss = out.float().square().mean()
    loss.backward()
    assert out.shape == x.shape and out.isfinite().all()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters())
    assert rel_err(out.float(), ref) < 0.05


@pytest.mark.parametrize("cfg", DIFFUSERS_CONFIGS)
def test_from_diffusers_exact_cuda(cfg, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = diffusers_model(**cfg).cuda()
    net = from_diffusers(model).eval()
    x, t, c, v = (a.cuda() for a in inputs(n=3, shape=(6, 14), tokens=7))
    kw = dict(hidden_states=x, encoder_hidden_states=c, pooled_projections=v, timestep=1000 * t)
    with torch.no_grad():
        assert rel_err(net(x, t, c, v), model(**kw).sample) < 1e-5
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert rel_err(net(x, t, c, v).float(), model(**kw).sample.float()) < 5e-2
