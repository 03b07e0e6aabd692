"""The Euler sampler: time shift, CFG, and equality with reference samplers (diffusers, k-diffusion)."""

import pytest
import torch

from rfsweep.formulations import build_formulation
from rfsweep.sampling import euler, sample, time_shift
from rfsweep.types import Cond

F64 = torch.float64


def smooth_net(x, t, context, pooled):
    """A nonlinear stand-in backbone that depends on x, t and the conditioning."""
    return torch.tanh(0.7 * x + t.reshape(-1, 1, 1, 1)) + 0.3 * pooled[:, :1, None, None] * x


def cond_of(pooled):
    return Cond(torch.zeros(pooled.shape[0], 2, 3, dtype=pooled.dtype), pooled)


def test_time_shift_matches_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler as FM

    # training sigmas: shift applied once to the same grid
    torch.testing.assert_close(time_shift(FM(shift=1.0).sigmas, 3.0), FM(shift=3.0).sigmas)
    for n in (5, 10, 25, 50):
        s1, s3 = FM(shift=1.0), FM(shift=3.0)
        s1.set_timesteps(n)
        s3.set_timesteps(sigmas=s1.sigmas[:-1].numpy())
        torch.testing.assert_close(time_shift(s1.sigmas, 3.0), s3.sigmas)
        # (set_timesteps(n) alone shifts its end point sigma_min twice, hence only approximately equal)
        s3.set_timesteps(n)
        assert (time_shift(s1.sigmas, 3.0) - s3.sigmas).abs().max() < 1e-2
    t = torch.linspace(0, 1, 11, dtype=F64)
    assert time_shift(t, 1.0) is t
    torch.testing.assert_close(time_shift(time_shift(t, 3.0), 1 / 3), t)  # the shift is a group in alpha


def test_euler_is_euler():
    seen = []

    def v(x, t):
        seen.append(float(t))
        return x

    ts = torch.linspace(1, 0, 11, dtype=F64)
    out = euler(v, torch.ones(2, dtype=F64), ts)
    torch.testing.assert_close(out, torch.full((2,), 0.9**10, dtype=F64))
    assert seen == ts[:-1].tolist()  # never evaluated at the last time


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_rf_equals_diffusers_flow_match_euler(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    f = build_formulation("rf/lognorm(0.00, 1.00)")
    noise, pooled = torch.randn(3, 2, 4, 4), torch.randn(3, 4)
    ours = sample(f, smooth_net, noise, cond_of(pooled), steps=10, shift=shift)
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(10)  # diffusers' own grid (with guidance and more step counts: tests/test_sd3_sampler.py)
    x = noise.clone()
    for k in sched.timesteps:
        x = sched.step(smooth_net(x, (k / 1000).expand(3), None, pooled), k, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, prediction_type", [("eps/linear", "epsilon"), ("v/linear", "v_prediction")])
@pytest.mark.parametrize("steps", [5, 10, 50])
def test_linear_equals_diffusers_ddim(name, prediction_type, steps):
    """Euler in the rf frame is DDIM (eta = 0) with trailing spacing over the 1000 LDM steps."""
    from diffusers import DDIMScheduler

    f = build_formulation(name)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing",
                          prediction_type=prediction_type)
    sched.set_timesteps(steps)
    noise, pooled = torch.randn(3, 2, 4, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    z = noise.clone()
    for k in sched.timesteps:
        ab = sched.alphas_cumprod[k].double()
        t_rf = (1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt())
        z = sched.step(smooth_net(z, t_rf.expand(3), None, pooled), k, z).prev_sample
    # rfsweep starts at z = b_T noise; start both at z = noise
    b_T = (1 - sched.alphas_cumprod[-1].double()).sqrt()
    ours = sample(f, smooth_net, noise / b_T, cond_of(pooled), steps=steps)
    torch.testing.assert_close(ours, z, rtol=1e-5, atol=1e-5)  # diffusers keeps alphas in float32


def karras_euler(net, noise, pooled, n, sigma_min=0.002, sigma_max=80.0, rho=7.0, sd=0.5):
    """k-diffusion's get_sigmas_karras + sample_euler around EDM's preconditioned denoiser (Karras et al. 2022)."""
    ramp = torch.linspace(0, 1, n, dtype=F64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    sigmas = torch.cat([sigmas, torch.zeros(1, dtype=F64)])
    x = noise * sigmas[0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
        D = c_skip * x + c_out * net(c_in * x, (s / (1 + s)).expand(x.shape[0]), None, pooled)
        x = x + (x - D) / s * (s_next - s)
    return x


@pytest.mark.parametrize("steps", [5, 25])
def test_edm_equals_k_diffusion_euler(steps):
    noise, pooled = torch.randn(3, 2, 4, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    ours = sample(build_formulation("edm(-1.20, 1.20)"), smooth_net, noise, cond_of(pooled), steps=steps)
    torch.testing.assert_close(ours, karras_euler(smooth_net, noise, pooled, steps))


class Recorder:
    def __init__(self):
        self.batches = []

    def __call__(self, x, t, context, pooled):
        self.batches.append(x.shape[0])
        return smooth_net(x, t, context, pooled)


@pytest.mark.parametrize("name", ["rf", "eps/linear", "v/cos", "edm(0.00, 0.60)"])
def test_classifier_free_guidance(name):
    f = build_formulation(name)
    noise, pooled_c = torch.randn(2, 2, 4, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    c, u = cond_of(pooled_c), cond_of(torch.zeros(1, 4, dtype=F64))  # uncond with batch 1 is broadcast
    net = Recorder()
    sample(f, net, noise, c, uncond=u, steps=5, guidance=1.0)
    assert net.batches == [2] * 5  # g = 1: no unconditional pass
    net = Recorder()
    guided = sample(f, net, noise, c, uncond=u, steps=5, guidance=4.0)
    assert net.batches == [4] * 5  # one batched forward per step
    u2 = Cond(u.context.expand(2, -1, -1), u.pooled.expand(2, -1))

    def v(x, t):
        v_c, v_u = f.velocity(smooth_net, x, t, c), f.velocity(smooth_net, x, t, u2)
        return v_u + 4.0 * (v_c - v_u)

    ts = f.sampling_grid(5)
    torch.testing.assert_close(guided, euler(v, ts[0] * noise, ts))
    with pytest.raises(ValueError, match="uncond"):
        sample(f, net, noise, c, guidance=2.5)


def test_sample_no_grad_and_dtype():
    lin = torch.nn.Linear(1, 1)

    def net(x, t, context, pooled):
        return lin(x.unsqueeze(-1)).squeeze(-1)

    out = sample(build_formulation("rf"), net, torch.randn(2, 1, 2, 2), cond_of(torch.zeros(2, 4)), steps=3)
    assert not out.requires_grad and out.dtype == torch.float32 and out.shape == (2, 1, 2, 2)
