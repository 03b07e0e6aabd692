"""The rf family's sampler is SD3's: diffusers' FlowMatchEulerDiscreteScheduler loop with classifier-free guidance and
rfsweep's sampler, driving the same network from the same noise, agree to 1e-5 at shifts 1 and 3, from 5 to 50
steps (the grid, the guidance and the Euler update alike)."""

from __future__ import annotations

import pytest
import torch

from rfsweep.formulations import build_formulation
from rfsweep.sampling import sample
from rfsweep.types import Cond


def _net():
    from rfsweep.backbones import build_backbone

    torch.manual_seed(0)
    net = build_backbone("mmdit", in_channels=4, context_dim=16, pooled_dim=8, depth=2, width=32, heads=2).double()
    with torch.no_grad():
        for p in net.parameters():  # away from adaLN-Zero's zero function, so the comparison means something
            p.normal_(0, 0.1)
    return net.eval()


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [5, 10, 28, 50])
def test_rf_sampler_is_diffusers_flow_match_euler_with_cfg(shift, steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    net, g = _net(), torch.Generator().manual_seed(1)
    noise = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    cond = Cond(torch.randn(2, 6, 16, generator=g, dtype=torch.float64), torch.randn(2, 8, generator=g,
                                                                                       dtype=torch.float64))
    uncond = Cond(torch.zeros(2, 6, 16, dtype=torch.float64), torch.zeros(2, 8, dtype=torch.float64))
    guidance = 5.0
    ours = sample(build_formulation("rf"), net, noise, cond, uncond, steps=steps, guidance=guidance, shift=shift)

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)  # SD3's: num_train_timesteps 1000
    scheduler.set_timesteps(steps)
    latents = noise.clone()
    ctx, pooled = torch.cat([uncond.context, cond.context]), torch.cat([uncond.pooled, cond.pooled])
    with torch.no_grad():
        for t in scheduler.timesteps:  # StableDiffusion3Pipeline's denoising loop
            x = torch.cat([latents, latents])
            out = net(x, (t / 1000).expand(len(x)).double(), ctx, pooled)  # the pipeline passes 1000 t
            v_u, v_c = out.chunk(2)
            latents = scheduler.step(v_u + guidance * (v_c - v_u), t, latents).prev_sample
    assert len(scheduler.timesteps) == steps
    err = ((ours - latents).abs().max() / latents.abs().max()).item()
    assert err < 1e-5, err
