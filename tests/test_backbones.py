"""Backbone contract, exactness against diffusers' SD3 transformer, compile, checkpointing, bf16."""

from pathlib import Path

import pytest
import torch

from rfsweep.backbones import BACKBONES, build_backbone, from_diffusers
from rfsweep.backbones.layers import PatchEmbed

NAMES = ["mmdit", "dit", "crossdit", "uvit", "mlp"]
CTX, VEC = 16, 12  # tiny text dims


def tiny(name: str, shape=(8, 12), **kw) -> torch.nn.Module:
    """A tiny backbone with random (non-zero) weights, so outputs and gradients are informative."""
    args = dict(in_channels=4, context_dim=CTX, pooled_dim=VEC, depth=2, width=32, heads=4)
    if name == "mlp":
        args.update(width=32, input_size=shape)
    net = build_backbone(name, **{**args, **kw})
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


def inputs(n=2, shape=(8, 12), tokens=6):
    return torch.randn(n, 4, *shape), torch.rand(n), torch.randn(n, tokens, CTX), torch.randn(n, VEC)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_registry():
    assert set(BACKBONES) == set(NAMES)
    with pytest.raises(ValueError, match="name="):
        build_backbone("unet")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(8, 8), (8, 12), (12, 4)])
def test_shape_contract(name, shape):
    net = tiny(name, shape)
    x, t, c, v = inputs(shape=shape)
    out = net(x, t, c, v)
    assert out.shape == x.shape and out.isfinite().all()


@pytest.mark.parametrize("name", ["mmdit", "dit", "crossdit", "uvit", "mlp"])
def test_zero_init_output(name):
    """adaLN-Zero / zero output layers: a fresh network is the zero function."""
    net = build_backbone(name, in_channels=4, context_dim=CTX, pooled_dim=VEC, depth=2, width=32, heads=4)
    assert net(*inputs(shape=(8, 8))).abs().max() == 0


def test_size_rule():
    net = build_backbone("mmdit", in_channels=4, context_dim=CTX, pooled_dim=VEC, depth=3)
    assert net.width == 192
    assert net.blocks[0].streams[1].qkv.heads == 3
    with pytest.raises(ValueError, match="divisible by heads"):
        build_backbone("mmdit", in_channels=4, context_dim=CTX, pooled_dim=VEC, depth=3, heads=5)


def test_weight_sets_3():
    """CLIP and T5 as separate streams: more parameters; equal to weight_sets=2 exactly when both text
    streams hold the text stream's weights, different once they differ."""
    two = tiny("mmdit", weight_sets=2)
    three = tiny("mmdit", weight_sets=3, clip_tokens=2)
    assert sum(p.numel() for p in three.parameters()) > sum(p.numel() for p in two.parameters())
    x, t, c, v = inputs()
    assert rel_err(three(x, t, c, v), two(x, t, c, v)) > 1e-3

    for name in ("x_embedder", "c_embedder", "final_layer"):
        getattr(three, name).load_state_dict(getattr(two, name).state_dict())
    for emb in three.context_embedders:
        emb.load_state_dict(two.context_embedders[0].state_dict())
    for b3, b2 in zip(three.blocks, two.blocks):
        for s3, s2 in zip(
            b3.streams, [b2.streams[0], *b2.streams]
        ):  # (clip, t5, image) <- (text, text, image)
            s3.load_state_dict(s2.state_dict())
    chunks = [
        two.modulations.linear.weight.split(two.modulations.sizes),
        two.modulations.linear.bias.split(two.modulations.sizes),
    ]
    order = [0, 0, 1, 2, 2, 3]  # per block: (text, text, image)
    with torch.no_grad():
        three.modulations.linear.weight.copy_(torch.cat([chunks[0][i] for i in order]))
        three.modulations.linear.bias.copy_(torch.cat([chunks[1][i] for i in order]))
    assert rel_err(three(x, t, c, v), two(x, t, c, v)) < 1e-5


def test_pos_embed_matches_diffusers():
    from diffusers.models.embeddings import PatchEmbed as DPatchEmbed

    for h, w, base in [(8, 8, None), (6, 10, None), (4, 14, 8)]:
        ours = PatchEmbed(4, 32, 2, 16, base)
        ref = DPatchEmbed(
            height=2 * (base or 16),
            width=2 * (base or 16),
            patch_size=2,
            in_channels=4,
            embed_dim=32,
            pos_embed_max_size=16,
        )
        torch.testing.assert_close(ours.pos_table.reshape(1, 256, 32), ref.pos_embed, rtol=0, atol=1e-6)
        ours.proj.load_state_dict(ref.proj.state_dict())
        x = torch.randn(2, 4, 2 * h, 2 * w)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)


DIFFUSERS_CONFIGS = [
    dict(num_layers=4, attention_head_dim=8, num_attention_heads=4, qk_norm=None, sample_size=32),
    dict(num_layers=4, attention_head_dim=8, num_attention_heads=4, qk_norm="rms_norm", sample_size=32),
    dict(num_layers=1, attention_head_dim=8, num_attention_heads=2, qk_norm="rms_norm", sample_size=16),
    dict(
        num_layers=3,
        attention_head_dim=16,
        num_attention_heads=3,
        qk_norm=None,
        sample_size=64,
        patch_size=1,
        pos_embed_max_size=48,
    ),
]


def diffusers_model(in_channels=4, **cfg):
    from diffusers import SD3Transformer2DModel

    dim = cfg["attention_head_dim"] * cfg["num_attention_heads"]
    model = SD3Transformer2DModel(
        in_channels=in_channels,
        out_channels=in_channels,
        joint_attention_dim=CTX,
        caption_projection_dim=dim,
        pooled_projection_dim=VEC,
        **cfg,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("cfg", DIFFUSERS_CONFIGS)
@pytest.mark.parametrize("shape", [(8, 8), (6, 14)])
def test_from_diffusers_exact(cfg, shape):
    model = diffusers_model(**cfg)
    net = from_diffusers(model).eval()
    x, t, c, v = inputs(n=3, shape=shape, tokens=7)
    with torch.no_grad():
        ref = model(hidden_states=x, encoder_hidden_states=c, pooled_projections=v, timestep=1000 * t).sample
        out = net(x, t, c, v)
    assert rel_err(out, ref) < 1e-5
    # the last block's context stream is pre-only: keys and values only
    assert net.blocks[-1].streams[0].qkv.linear.out_features == 2 * net.width


def test_from_diffusers_rejects_unsupported():
    model = diffusers_model(
        num_layers=2, attention_head_dim=8, num_attention_heads=2, dual_attention_layers=(0,)
    )
    with pytest.raises(ValueError, match="dual_attention_layers"):
        from_diffusers(model)
    model = diffusers_model(num_layers=2, attention_head_dim=8, num_attention_heads=2, qk_norm="layer_norm")
    with pytest.raises(ValueError, match="qk_norm"):
        from_diffusers(model)


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_equivalent(name):
    torch.manual_seed(1)
    net = tiny(name)
    x, t, c, v = inputs()
    results = []
    for flag in (False, True):
        net.grad_checkpointing = flag
        net.zero_grad()
        out = net(x, t, c, v)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g0, g1)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_close(name):
    net = tiny(name, qk_norm=True) if name != "mlp" else tiny(name)
    x, t, c, v = inputs()
    ref = net(x, t, c, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, c, v)
    assert out.isfinite().all()
    assert rel_err(out.float(), ref) < 0.05


@pytest.mark.parametrize(
    "backend",
    ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)],  # inductor: ~1 min each on CPU
)
@pytest.mark.parametrize("name", NAMES)
def test_compile_fullgraph(name, backend):
    """No graph breaks (fullgraph=True), forward and backward through the compiled graph."""
    torch._dynamo.reset()
    net = tiny(name, qk_norm=name != "mlp")
    x, t, c, v = inputs()
    ref = net(x, t, c, v)
    compiled = torch.compile(net, fullgraph=True, backend=backend)
    out = compiled(x, t, c, v)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,weight_sets", [("mmdit", 2), ("mmdit", 3), ("dit", 1)])
def test_train_flops_formula_matches_counted_flops(name, weight_sets):
    """`rfsweep.backbones.flops` against torch's FLOP counter on a real forward (attention through the math
    kernel, so its matmuls are counted): equal up to the per-sample matmuls the formula leaves out (< 1.5%)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from rfsweep.backbones.flops import train_flops_per_sample

    extra = {"clip_tokens": 6} if name == "mmdit" else {}
    net = build_backbone(name, in_channels=4, context_dim=CTX, pooled_dim=VEC, depth=2, width=64, heads=2,
                         weight_sets=weight_sets, **extra)
    x, t, c, v = inputs(n=1, shape=(32, 24), tokens=16)
    with FlopCounterMode(display=False) as counter, sdpa_kernel([SDPBackend.MATH]), torch.no_grad():
        net(x, t, c, v)
    formula = train_flops_per_sample(net, (4, 32, 24), 16)
    assert 0 < 3 * counter.get_total_flops() - formula < 0.015 * formula
    assert train_flops_per_sample(build_backbone("uvit", in_channels=4, context_dim=CTX, pooled_dim=VEC, depth=1,
                                                 width=32, heads=2), (4, 8, 8), 6) is None


def test_every_backbone_keeps_the_protocol():
    from rfsweep.backbones import BACKBONES, Backbone, build_backbone

    for name in BACKBONES:
        kw = {"input_size": 8} if name == "mlp" else {"heads": 2}
        net = build_backbone(name, in_channels=3, context_dim=16, pooled_dim=16, depth=1, width=32, **kw)
        assert isinstance(net, Backbone), name
        y = net(torch.randn(2, 3, 8, 8), torch.rand(2), torch.randn(2, 5, 16), torch.randn(2, 16))
        assert y.shape == (2, 3, 8, 8), name


@pytest.mark.parametrize("name", ["dit", "crossdit", "mmdit", "uvit"])
def test_transformer_backbones_are_initialised_alike(name):
    """Fig. 4 compares them: DiT's initialisation for every one (Xavier linears, zero modulations, a zero output)."""
    from rfsweep.backbones import build_backbone

    torch.manual_seed(0)
    net = build_backbone(name, in_channels=4, context_dim=64, pooled_dim=32, depth=2, width=128, heads=2)
    y = net(torch.randn(2, 4, 8, 8), torch.rand(2), torch.randn(2, 6, 64), torch.randn(2, 32))
    assert torch.count_nonzero(y) == 0  # adaLN-Zero: the zero function at initialisation
    linears = [m for m in net.blocks.modules() if isinstance(m, torch.nn.Linear) and m.weight.abs().sum() > 0]
    assert linears
    for m in linears:
        fan_out, fan_in = m.weight.shape
        assert m.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.15), name
        assert m.bias is None or torch.count_nonzero(m.bias) == 0


def test_mlp_skip_passes_the_input_through():
    """skip=True: a fresh network is still the zero function, and its scalar gate c(t, c_vec) x lets the output
    equal the input (what eps- and v-prediction need at low SNR) without any of it passing the width."""
    kw = dict(in_channels=4, context_dim=CTX, pooled_dim=VEC, depth=2, width=8, input_size=(8, 8))
    net = build_backbone("mlp", skip=True, **kw)
    x, t, c, v = inputs(shape=(8, 8))
    assert net(x, t, c, v).abs().max() == 0
    with torch.no_grad():
        net.skip.bias.fill_(1.0)
    torch.testing.assert_close(net(x, t, c, v), x)
    assert build_backbone("mlp", **kw).skip is None  # off by default: earlier runs' weights still load


def test_the_benchmark_compiles_each_block_alone_with_fullgraph(monkeypatch):
    """`bench_backbones.py --compile --compile-scope blocks` (a speed option to measure on a GPU): every transformer
    block of rfsweep's MM-DiT and of diffusers' SD3 model compiled with fullgraph=True, the model itself not."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_backbones as bench

    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    a = bench.parse_args(["--device", "cpu", "--compile", "--compile-scope", "blocks", "--depth", "2"])
    dm = bench.diffusers_model(a)
    assert bench.compiled(dm, a) is dm and [c for c, _ in calls] == ["JointTransformerBlock"] * 2
    ours = from_diffusers(dm)
    calls.clear()
    assert bench.compiled(ours, a) is ours and len(calls) == 2 and all(kw["fullgraph"] for _, kw in calls)
