"""conditioning=sd3 and autoencoder=sd3_vae give what SD3's own code gives: StableDiffusion3Pipeline.encode_prompt
(no attention mask, penultimate CLIP states, zero padding, pooled CLIP vectors) and AutoencoderKL.encode with SD3's
shift and scale, for a tiny random SD3 saved with save_pretrained and loaded through the configs (from_pretrained)."""

from __future__ import annotations

import copy

import pytest
import torch

from rfsweep.run.builders import build_autoencoder, build_conditioner
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


def test_precompute_writes_what_sd3s_own_code_computes(sd3, tmp_path):
    """Through `python -m rfsweep.cli.precompute` with conditioning=sd3 autoencoder=sd3_vae (from_pretrained on the
    folder): the stored latents are AutoencoderKL's, the stored parts assemble to encode_prompt's embeddings."""
    from rfsweep.cli.precompute import main
    from rfsweep.data import build_dataset
    from rfsweep.data.precomputed import PrecomputedDataset
    from tests.sd3_parts import sd3_overrides

    pipe, cfg = sd3
    folder = cfg.conditioning.repo
    main([str(tmp_path / "pre"), "--splits", "val", "data=shapes", *sd3_overrides(folder)])
    pre = PrecomputedDataset(tmp_path / "pre", "val")
    raw = build_dataset("shapes", "val", 16)
    cond = build_conditioner(cfg)
    for i in (0, 7):
        x = raw[i]["image"][None]
        with torch.no_grad():
            vae = pipe.vae
            ref = (vae.encode(x).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor
        assert torch.allclose(pre[i]["latents"].float(), ref[0], atol=2e-3, rtol=2e-3)  # stored in fp16
        item = pre[i]
        ours = cond.assemble([(t[None].float(), p[None].float()) for t, p in item["parts"]])
        embeds, _, pooled, _ = pipe.encode_prompt([item["caption"]], [item["caption"]], [item["caption"]],
                                                  do_classifier_free_guidance=False, max_sequence_length=77)
        assert torch.allclose(ours.context, embeds.float(), atol=2e-3, rtol=2e-3)
        assert torch.allclose(ours.pooled, pooled.float(), atol=2e-3, rtol=2e-3)


def test_training_on_pre_encoded_data_never_loads_the_text_encoders(sd3, tmp_path):
    """SD3's encoders are checked on disk before training, loaded only for the evaluation prompts."""
    from rfsweep.cli.precompute import main
    from rfsweep.cluster.signals import PreemptionGuard
    from rfsweep.run.builders import build_module
    from rfsweep.run.fit import fit
    from tests.helpers import tiny
    from tests.sd3_parts import sd3_overrides

    pipe, cfg = sd3
    folder = cfg.conditioning.repo
    main([str(tmp_path / "pre"), "--splits", "train,val", "data=shapes", *sd3_overrides(folder)])
    base = [o for o in tiny(tmp_path, 2) if not o.startswith(("conditioning", "backbone"))]
    run_cfg = compose_cfg([*base, *sd3_overrides(folder), "data.name=precomputed", f"data.path={tmp_path / 'pre'}",
                           "backbone=mmdit", "backbone.depth=1", "backbone.width=32", "backbone.heads=2"],
                          run_dir=str(tmp_path / "run"))
    module, data = build_module(run_cfg)
    encoders = module.conditioner.encoders
    assert all(e.model is None for e in encoders)  # nothing loaded yet
    assert fit(run_cfg, module, data, tmp_path / "run", PreemptionGuard()) == 2
    assert all(e.model is None for e in encoders)  # trained without them
    module.conditioner(["a red circle"])  # an evaluation prompt loads them
    assert all(e.model is not None for e in encoders)
