"""The embedded evaluator's model: a tiny open_clip `CLIP` on 8x8 images and a word-level tokenizer.

The real evaluator is CLIP-L/14 (Sec. 5.1); this stand-in keeps the same contract (normalised image and
text embeddings, cosine CLIP score, FID on image embeddings) for the embedded `digits` / `shapes` sets,
whose captions use a vocabulary of a few dozen words, so a word-level tokenizer replaces open_clip's BPE
(a 49408-token embedding table alone would be 100x the size of the rest of the model).
"""

from __future__ import annotations

import re

import torch
from open_clip.model import CLIP

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"  # ids 0, 1, 2; words start at 3

# Small enough to train in about a minute on one CPU core and ship in well under 2 MB.
DEFAULT_CONFIG = {
    "embed_dim": 64,
    "image_size": 8,  # every image is resized to this by area averaging (see `EmbeddedCLIP`)
    "vision_cfg": {"image_size": 8, "patch_size": 2, "width": 48, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 12, "width": 48, "heads": 3, "layers": 2,
                 "pool_type": "eos", "eos_id": 2, "pad_id": 0},
}


def words(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", caption.lower())


def build_vocab(captions) -> list[str]:
    return [PAD, UNK, EOS, *sorted({w for c in captions for w in words(c)})]


class WordTokenizer:
    """captions -> (B, context_length) ids: words, then <eos>, then <pad>; unknown words -> <unk>."""

    def __init__(self, vocab: list[str], context_length: int):
        self.vocab, self.context_length = vocab, context_length
        self.index = {w: i for i, w in enumerate(vocab)}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        out = torch.zeros(len(captions), self.context_length, dtype=torch.long)
        for row, c in enumerate(captions):
            ids = [self.index.get(w, 1) for w in words(c)][: self.context_length - 1] + [2]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def build_model(config: dict, vocab_size: int) -> CLIP:
    text_cfg = {**config["text_cfg"], "vocab_size": vocab_size}
    return CLIP(embed_dim=config["embed_dim"], vision_cfg=config["vision_cfg"], text_cfg=text_cfg)
