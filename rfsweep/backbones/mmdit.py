"""MM-DiT (paper Sec. 4, Fig. 2): one weight set per modality, one joint attention over all tokens.

Each block holds one `StreamBlock` per weight set (norm modulation, fused QKV, optional Q/K RMSNorm,
output projection, MLP). The streams' tokens meet only inside the attention, concatenated as
[context streams..., image]. Attention carries no positions (they are added once at the patch embedding),
so it is permutation-equivariant over the sequence: diffusers' image-first order gives the same result.

weight_sets: 3 = (CLIP tokens, T5 tokens, image), 2 = (text, image), the paper's default,
1 = one shared set over [text, image]: the paper's "DiT" baseline (`dit.py`).
The last block's context streams are pre-only (as SD3): their outputs are never read, so they contribute
keys and values only (no queries, output projection or MLP).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rfsweep.backbones.layers import (
    QKV,
    ConditionEmbedder,
    FinalLayer,
    Mlp,
    Modulations,
    PatchEmbed,
    attention,
    checkpointed,
    dit_init_,
    layer_norm,
    modulate,
    resolve_size,
    unpatchify,
)


class StreamBlock(nn.Module):
    """One weight set's part of an MM-DiT block. x: (N, L, D), mod: (N, n_mod * D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool, pre_only: bool):
        super().__init__()
        self.pre_only = pre_only
        self.n_mod = 2 if pre_only else 6  # (shift, scale) or (shift, scale, gate) x (attention, MLP)
        self.qkv = QKV(dim, heads, qk_norm, queries=not pre_only)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def pre_attention(self, x: torch.Tensor, mod: torch.Tensor):
        """-> q (None if pre-only), k, v: (N, L, H, Dh)."""
        shift, scale = mod.chunk(self.n_mod, dim=1)[:2]
        return self.qkv(modulate(layer_norm(x), shift, scale))

    def post_attention(self, x: torch.Tensor, a: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """a: (N, L, D) attention output for this stream's tokens."""
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.proj(a)
        return x + gate_mlp[:, None] * self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp))


def _cat(ts: list[torch.Tensor]) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim=1)


class MMDiTBlock(nn.Module):
    """Joint attention over streams. xs: list of (N, L_i, D), mods: list of (N, n_mod_i * D).

    Returns the streams that are not pre-only (in order).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool, pre_only: list[bool]):
        super().__init__()
        self.streams = nn.ModuleList(StreamBlock(dim, heads, mlp_ratio, qk_norm, p) for p in pre_only)

    def forward(self, xs: list[torch.Tensor], mods: list[torch.Tensor]) -> list[torch.Tensor]:
        qkv = [s.pre_attention(x, m) for s, x, m in zip(self.streams, xs, mods)]
        q = _cat([q for q, _, _ in qkv if q is not None])
        k, v = _cat([k for _, k, _ in qkv]), _cat([v for _, _, v in qkv])
        out = attention(q, k, v)  # (N, L_q, D), queries of the streams that go on
        kept = [(s, x, m) for s, x, m in zip(self.streams, xs, mods) if not s.pre_only]
        outs = out.split([x.shape[1] for _, x, _ in kept], dim=1) if len(kept) > 1 else (out,)
        return [s.post_attention(x, a, m) for (s, x, m), a in zip(kept, outs)]


class MMDiT(nn.Module):
    """net(x, t, context, pooled) -> (N, C, H, W); see `rfsweep.backbones` for the contract.

    x: (N, C, H, W), t: (N,), context: (N, L, D_ctx), pooled: (N, D_vec).
    """

    def __init__(
        self,
        in_channels: int,
        context_dim: int,
        pooled_dim: int,
        depth: int,
        width: int | None = None,  # default 64 * depth (Sec. 4 size rule)
        heads: int | None = None,  # default depth
        mlp_ratio: float = 4.0,
        patch_size: int = 2,
        pos_embed_max_size: int = 96,  # positions: centre crop of a (96, 96) sin-cos table
        qk_norm: bool = False,  # RMSNorm on Q and K
        grad_checkpointing: bool = False,
        weight_sets: int = 2,  # 1 (= DiT), 2 (text, image) or 3 (CLIP, T5, image)
        clip_tokens: int = 77,  # leading context tokens that are CLIP's (weight_sets=3)
        pos_embed_base_size: int | None = None,  # None: unit spacing; SD3 / diffusers: sample_size / p
    ):
        super().__init__()
        width, heads = resolve_size(depth, width, heads)
        if weight_sets not in (1, 2, 3):
            raise ValueError(f"weight_sets must be 1, 2 or 3, got {weight_sets}")
        self.in_channels, self.patch_size, self.width = in_channels, patch_size, width
        self.weight_sets, self.clip_tokens = weight_sets, clip_tokens
        self.grad_checkpointing = grad_checkpointing
        n_ctx = weight_sets - 1  # context-only streams

        self.x_embedder = PatchEmbed(in_channels, width, patch_size, pos_embed_max_size, pos_embed_base_size)
        self.c_embedder = ConditionEmbedder(pooled_dim, width)
        # CLIP's 2048 channels are zero-padded to 4096 and T5's are not: with 3 sets each gets its own map
        self.context_embedders = nn.ModuleList(nn.Linear(context_dim, width) for _ in range(max(n_ctx, 1)))
        self.blocks = nn.ModuleList(
            MMDiTBlock(width, heads, mlp_ratio, qk_norm, [i == depth - 1] * n_ctx + [False])
            for i in range(depth)
        )
        self.modulations = Modulations(width, [s.n_mod * width for b in self.blocks for s in b.streams])
        self.final_layer = FinalLayer(width, patch_size * patch_size * in_channels)
        dit_init_(self)

    def embed_context(self, context: torch.Tensor) -> list[torch.Tensor]:
        if self.weight_sets == 3:
            c = self.clip_tokens
            return [self.context_embedders[0](context[:, :c]), self.context_embedders[1](context[:, c:])]
        return [self.context_embedders[0](context)]

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor
    ) -> torch.Tensor:
        p = self.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        img = self.x_embedder(x)  # (N, h * w, D)
        y = self.c_embedder(t, pooled)  # (N, D)
        ctx = self.embed_context(context)
        xs = [torch.cat(ctx + [img], dim=1)] if self.weight_sets == 1 else ctx + [img]
        mods = self.modulations(y)
        i = 0
        for block in self.blocks:
            n = len(block.streams)
            xs = checkpointed(block, xs, mods[i : i + n], enabled=self.grad_checkpointing)
            i += n
        img = xs[-1][:, -h * w :]
        return unpatchify(self.final_layer(img, y), h, w, p)


# --------------------------------------------------------------------------------------------------------
# diffusers SD3Transformer2DModel -> MMDiT
# --------------------------------------------------------------------------------------------------------


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """diffusers' AdaLayerNormContinuous emits (scale, shift); ours (shift, scale)."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


@torch.no_grad()
def from_diffusers(model) -> MMDiT:
    """An MMDiT (weight_sets=2) with the weights of a diffusers `SD3Transformer2DModel` (SD3.0 layout).

    diffusers' forward(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
    timestep=1000 t) equals ours(x, t, context, pooled). The last block's unused context query
    projection (add_q_proj) is dropped.
    """
    cfg = model.config
    width = cfg.num_attention_heads * cfg.attention_head_dim
    unsupported = {
        "dual_attention_layers (SD3.5)": tuple(cfg.dual_attention_layers or ()) != (),
        f"qk_norm={cfg.qk_norm!r} (only None or 'rms_norm')": cfg.qk_norm not in (None, "rms_norm"),
        "caption_projection_dim != heads * head_dim": cfg.caption_projection_dim != width,
        "out_channels != in_channels": (cfg.out_channels or cfg.in_channels) != cfg.in_channels,
        "image projection (IP-Adapter)": getattr(model, "image_proj", None) is not None,
        "fused QKV projections (call unfuse first)": hasattr(model.transformer_blocks[0].attn, "to_qkv"),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"from_diffusers does not support: {', '.join(bad)}")

    with torch.device(model.device):  # initialise where the weights live (fast for 2B parameters)
        net = MMDiT(
            in_channels=cfg.in_channels,
            context_dim=cfg.joint_attention_dim,
            pooled_dim=cfg.pooled_projection_dim,
            depth=cfg.num_layers,
            width=width,
            heads=cfg.num_attention_heads,
            patch_size=cfg.patch_size,
            pos_embed_max_size=cfg.pos_embed_max_size,
            qk_norm=cfg.qk_norm is not None,
            weight_sets=2,
            pos_embed_base_size=cfg.sample_size // cfg.patch_size,
        ).to(dtype=model.dtype)

    def lin(dst: nn.Linear, *srcs: nn.Linear, transform=lambda t: t) -> None:
        dst.weight.copy_(transform(torch.cat([s.weight for s in srcs], dim=0)))
        dst.bias.copy_(transform(torch.cat([s.bias for s in srcs], dim=0)))

    m = cfg.pos_embed_max_size
    net.x_embedder.proj.load_state_dict(model.pos_embed.proj.state_dict())
    net.x_embedder.pos_table.copy_(model.pos_embed.pos_embed.reshape(m, m, width))
    te = model.time_text_embed
    lin(net.c_embedder.t_embedder.fc1, te.timestep_embedder.linear_1)
    lin(net.c_embedder.t_embedder.fc2, te.timestep_embedder.linear_2)
    lin(net.c_embedder.y_embedder.fc1, te.text_embedder.linear_1)
    lin(net.c_embedder.y_embedder.fc2, te.text_embedder.linear_2)
    lin(net.context_embedders[0], model.context_embedder)

    mod_w, mod_b = [], []
    for block, ref in zip(net.blocks, model.transformer_blocks):
        ctx, img = block.streams
        a = ref.attn
        # modulation of each stream, in the order Modulations expects: (context, image)
        pre = ref.context_pre_only
        swap = _swap_halves if pre else (lambda t: t)
        mod_w += [swap(ref.norm1_context.linear.weight), ref.norm1.linear.weight]
        mod_b += [swap(ref.norm1_context.linear.bias), ref.norm1.linear.bias]
        lin(img.qkv.linear, a.to_q, a.to_k, a.to_v)
        lin(
            ctx.qkv.linear,
            *((a.add_k_proj, a.add_v_proj) if pre else (a.add_q_proj, a.add_k_proj, a.add_v_proj)),
        )
        if cfg.qk_norm is not None:
            img.qkv.q_norm.weight.copy_(a.norm_q.weight)
            img.qkv.k_norm.weight.copy_(a.norm_k.weight)
            ctx.qkv.k_norm.weight.copy_(a.norm_added_k.weight)
            if not pre:
                ctx.qkv.q_norm.weight.copy_(a.norm_added_q.weight)
        lin(img.proj, a.to_out[0])
        lin(img.mlp.fc1, ref.ff.net[0].proj)
        lin(img.mlp.fc2, ref.ff.net[2])
        if not pre:
            lin(ctx.proj, a.to_add_out)
            lin(ctx.mlp.fc1, ref.ff_context.net[0].proj)
            lin(ctx.mlp.fc2, ref.ff_context.net[2])
    net.modulations.linear.weight.copy_(torch.cat(mod_w, dim=0))
    net.modulations.linear.bias.copy_(torch.cat(mod_b, dim=0))
    lin(net.final_layer.adaLN_modulation, model.norm_out.linear, transform=_swap_halves)
    lin(net.final_layer.linear, model.proj_out)
    return net
