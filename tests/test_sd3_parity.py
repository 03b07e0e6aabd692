"""conditioning=sd3 and autoencoder=sd3_vae give what SD3's own code gives: StableDiffusion3Pipeline.encode_prompt
(no attention mask, penultimate CLIP states, zero padding, pooled CLIP vectors) and AutoencoderKL.encode with SD3's
shift and scale, for a tiny random SD3 saved with save_pretrained and loaded through the configs (from_pretrained)."""

from __future__ import annotations

import copy

import pytest
import torch

from rfsweep.builders import build_autoencoder, build_conditioner
from tests.helpers import compose_cfg
from tests.sd3_parts import sd3_overrides, write_sd3

PROMPTS = ["a red circle left of a blue square", "a photo of a seven", ""]


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    folder = write_sd3(tmp_path_factory.mktemp("sd3") / "repo")
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder)  # every component through from_pretrained
    cfg = compose_cfg(sd3_overrides(folder))
    return pipe, cfg


def test_prompt_embeddings_are_the_pipelines(sd3):
    pipe, cfg = sd3
    cond = build_conditioner(cfg)
    ours = cond(PROMPTS)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, PROMPTS, PROMPTS, do_classifier_free_guidance=False,
                                              max_sequence_length=77)
    assert ours.context.shape == embeds.shape == (3, 154, cfg.conditioning.context_dim)
    assert ours.pooled.shape == pooled.shape == (3, cfg.conditioning.pooled_dim)
    assert torch.allclose(ours.context, embeds.float(), atol=1e-5, rtol=1e-5)
    assert torch.allclose(ours.pooled, pooled.float(), atol=1e-5, rtol=1e-5)


def test_attention_mask_would_differ(sd3):
    """The check has teeth: passing the padding mask (as the encoders were called before) changes the embeddings."""
    pipe, cfg = sd3
    cfg = copy.deepcopy(cfg)
    cfg.conditioning.encoders[2].attention_mask = True
    masked = build_conditioner(cfg)(PROMPTS[:1]).context
    embeds = pipe.encode_prompt(PROMPTS[:1], PROMPTS[:1], PROMPTS[:1], do_classifier_free_guidance=False,
                                max_sequence_length=77)[0]
    assert not torch.allclose(masked, embeds.float(), atol=1e-4)


def test_latents_are_the_vaes_with_sd3_shift_and_scale(sd3):
    pipe, cfg = sd3
    ae = build_autoencoder(cfg)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = (pipe.vae.encode(x).latent_dist.mode() - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    assert torch.allclose(ae.encode(x), ref, atol=1e-6)
    assert (ae.shift, ae.scale) == (pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor)
