"""A tiny random SD3 as a diffusers repo folder, written with `save_pretrained` by the real classes: CLIP-L, CLIP-G
(CLIPTextModelWithProjection + CLIPTokenizer), T5 (T5EncoderModel + T5Tokenizer), the VAE (AutoencoderKL) and the
transformer (SD3Transformer2DModel). The tokenizers are the real classes with small vocabularies built here (byte-level
BPE without merges for CLIP, a unigram vocabulary for T5): no download is possible on this machine."""

from __future__ import annotations

from pathlib import Path

import torch

CLIP_L = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
CLIP_G = dict(hidden_size=24, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, projection_dim=24)
T5 = dict(d_model=48, d_kv=8, d_ff=32, num_layers=2, num_heads=2)
VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[8, 16], layers_per_block=1,
           down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=8,
           shift_factor=0.0609, scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False)
CONTEXT_DIM, POOLED_DIM = max(16 + 24, 48), 16 + 24  # SD3's 4096 and 2048 at this size


def clip_tokenizer():
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77), len(vocab)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in (
        "a", "red", "blue", "green", "circle", "square", "photo", "of", "left", "above", "two", "seven")]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512), len(pieces)


def write_sd3(folder: Path, seed: int = 0) -> Path:
    """The whole pipeline, saved with StableDiffusion3Pipeline.save_pretrained (model_index.json and subfolders)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok, n = clip_tokenizer()
    t5tok, n5 = t5_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=CONTEXT_DIM,
                                          caption_projection_dim=16, pooled_projection_dim=POOLED_DIM,
                                          pos_embed_max_size=16),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=AutoencoderKL(**VAE),
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=n, max_position_embeddings=77, **CLIP_L)),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=n, max_position_embeddings=77,
                                                                  **CLIP_G)),
        tokenizer_2=tok, text_encoder_3=T5EncoderModel(T5Config(vocab_size=n5, **T5)), tokenizer_3=t5tok)
    pipe.save_pretrained(folder)
    return folder


def sd3_overrides(folder: Path) -> list[str]:
    """conditioning=sd3 autoencoder=sd3_vae pointed at the folder, at its widths."""
    return ["conditioning=sd3", f"conditioning.repo={folder}", "conditioning.dtype=float32",
            f"conditioning.context_dim={CONTEXT_DIM}",
            f"conditioning.pooled_dim={POOLED_DIM}", "autoencoder=sd3_vae", f"autoencoder.name={folder}",
            "data.resolution=16"]
