import time

import pytest
import torch

from rfsweep.autoencoders import DiffusersVAE, IdentityAutoencoder
from rfsweep.conditioning import Conditioner
from rfsweep.text_encoders import HashTextEncoder, HFTextEncoder, WeightsUnavailable

TINY_CLIP = dict(vocab_size=30522, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, projection_dim=24, max_position_embeddings=77)
TINY_CLIP_G = {**TINY_CLIP, "hidden_size": 48, "projection_dim": 40}
TINY_T5 = dict(vocab_size=30522, d_model=64, d_kv=8, d_ff=37, num_layers=2, num_heads=4)


@pytest.fixture(scope="module")
def sd3_layout():
    """SD3's three encoders (Sec. 4) at tiny random configs of the same transformers classes."""
    encs = [HFTextEncoder("minilm", kind="clip", model_class="clip", config=TINY_CLIP, tokenizer="minilm",
                          hidden_layer=-2, pooling="projection", max_length=7),
            HFTextEncoder("minilm", kind="clip", model_class="clip", config=TINY_CLIP_G, tokenizer="minilm",
                          hidden_layer=-2, pooling="projection", max_length=7),
            HFTextEncoder("minilm", kind="t5", model_class="t5", config=TINY_T5, tokenizer="minilm",
                          pooling="none", max_length=9)]
    return Conditioner(encs, drop_prob=0.464, cache=False)


def test_sd3_layout(sd3_layout):
    c = sd3_layout
    assert (c.context_dim, c.pooled_dim, c.context_len) == (max(32 + 48, 64), 24 + 40, 7 + 9)
    out = c(["a red circle", "a photo of a seven"])
    assert out.context.shape == (2, 16, 80) and out.pooled.shape == (2, 64)
    parts = c.encode(["a red circle"])
    # CLIP states side by side in the first 7 tokens, zero-padded; T5 states appended along the sequence.
    close = lambda a, b: torch.allclose(a, b, atol=1e-5)  # noqa: E731  (batch-size-dependent matmul rounding)
    assert close(out.context[0, :7, :32], parts[0][0][0])
    assert close(out.context[0, :7, 32:80], parts[1][0][0])
    assert close(out.context[0, 7:, :64], parts[2][0][0]) and out.context[0, 7:, 64:].abs().sum() == 0
    assert close(out.pooled[0], torch.cat([parts[0][1][0], parts[1][1][0]]))


def test_dropout_is_independent_per_encoder(sd3_layout):
    c = sd3_layout
    g = torch.Generator().manual_seed(0)
    keep = c.drop_mask(200_000, g)
    assert abs((~keep).float().mean() - 0.464) < 0.005
    all_dropped = (~keep).all(1).float().mean()
    assert abs(all_dropped - 0.464**3) < 0.004  # ~10% fully unconditional (Sec. 5.1)
    parts = c.encode(["x"] * 4)
    mask = torch.tensor([[True, False, True]] * 4)
    out = c.assemble(parts, mask)
    assert out.context[:, :7, 32:80].abs().sum() == 0 and out.context[:, :7, :32].abs().sum() > 0
    assert out.pooled[:, 24:].abs().sum() == 0
    u = c.unconditional(3)
    assert u.context.shape == (3, 16, 80) and u.context.abs().sum() == 0 and u.pooled.shape == (3, 64)
    none = c.assemble(parts, torch.zeros(4, 3, dtype=torch.bool))
    assert torch.equal(none.context, c.unconditional(4).context)


def test_minilm_from_package_and_cache(tmp_path):
    enc = HFTextEncoder("minilm", max_length=16)
    c = Conditioner([enc], cache=True)
    a = c(["a photo of a seven", "a photo of a 7", "a red circle"])
    assert a.context.shape == (3, 16, 384) and a.pooled.shape == (3, 384)
    cos = torch.nn.functional.cosine_similarity
    assert cos(a.pooled[0], a.pooled[1], dim=0) > cos(a.pooled[0], a.pooled[2], dim=0)  # a real encoder
    c.warm(["a photo of a seven", "a blue square"], tmp_path / "e.pt")
    c2 = Conditioner([enc], cache=True)
    c2.warm(["a photo of a seven", "a blue square"], tmp_path / "e.pt")
    assert torch.allclose(c2(["a blue square"]).pooled, c(["a blue square"]).pooled)


def test_missing_hub_weights_fail_fast():
    t = time.time()
    with pytest.raises(WeightsUnavailable, match="openai/clip-vit-large-patch14"):
        HFTextEncoder("openai/clip-vit-large-patch14", model_class="clip")
    with pytest.raises(WeightsUnavailable, match="autoencoder.name"):
        DiffusersVAE("stabilityai/sd-vae-ft-ema")
    assert time.time() - t < 30


def test_hash_encoder_is_deterministic():
    a, b = HashTextEncoder(16, 8), HashTextEncoder(16, 8)
    ta, pa = a(["a red circle", "two"])
    tb, pb = b(["a red circle", "two"])
    assert torch.equal(ta, tb) and torch.equal(pa, pb) and not torch.equal(pa[0], pa[1])


def test_autoencoders_shift_scale_roundtrip():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    ae = IdentityAutoencoder(shift=0.1, scale=2.0)
    assert torch.allclose(ae.encode(x), (x - 0.1) * 2) and torch.allclose(ae.decode(ae.encode(x)), x)
    vae = DiffusersVAE(config=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16],
                                   down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                   norm_num_groups=4, layers_per_block=1), shift=0.06, scale=1.5)
    z = vae.encode(x)
    raw = vae.vae.encode(x).latent_dist.mode()
    assert z.shape == (2, 4, 8, 8) and vae.downsample == 2 and torch.allclose(z, (raw - 0.06) * 1.5, atol=1e-6)
    assert vae.decode(z).shape == x.shape


def test_cached_table_lives_with_the_encoders():
    c = Conditioner([HashTextEncoder(16, 8)], cache=True)
    c.warm(["a red circle", "a blue square"])
    tok, pool = c.encode(["a blue square", "a red circle"])[0]
    assert tok.device == pool.device == c.device
    assert torch.allclose(pool[0], HashTextEncoder(16, 8)(["a blue square"])[1][0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_table_warmed_on_cpu_follows_the_conditioner_to_the_gpu():
    c = Conditioner([HashTextEncoder(16, 8)], cache=True)
    c.warm(["a red circle", "a blue square"])  # warmed on the CPU, as rfsweep.run.builders does before fitting
    c.to("cuda")
    tok, pool = c.encode(["a blue square"])[0]
    assert tok.is_cuda and pool.is_cuda
    out = c(["a red circle"], drop=True, generator=torch.Generator("cuda").manual_seed(0))
    assert out.context.is_cuda and out.pooled.is_cuda


@pytest.mark.parametrize("group,name", [("conditioning=sd3", "stabilityai/stable-diffusion-3-medium-diffusers"),
                                        ("autoencoder=sd3_vae", "stabilityai/stable-diffusion-3-medium-diffusers")])
def test_cli_missing_weights_is_one_line(tmp_path, group, name):
    """Through the CLI too (hydra wraps what a configured class raises): one line naming what to download."""
    from tests.helpers import run_cli, tiny

    overrides = [o for o in tiny(tmp_path) if not o.startswith("conditioning=")]
    r = run_cli([*overrides, group, "data.resolution=16"], timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and name in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
