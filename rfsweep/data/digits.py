"""`digits`: the UCI handwritten digits that scikit-learn ships, as a text-to-image set standing in for
ImageNet (captioned "a photo of a <synonym>"). Nothing is downloaded.

`colour_digits`: the same digits, each drawn in one of the six `shapes` colours (fixed per image by the data
seed), captioned "a photo of a <colour> <synonym>": 60 classes of about 24 training images each, and a caption
that a sample can contradict in two ways. The demo's stand-in for ImageNet: on the grey digits the CLIP score
ordered the formulations against the paper's order (README, "The demo").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rfsweep.data.captions import DIGIT_SYNONYMS, class_caption, draw
from rfsweep.data.shapes import COLOURS

SPLIT_FRACTIONS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}


class Digits(Dataset):
    """Items: {"image": (3, H, W) in [-1, 1], "caption": str, "label": int}.

    The 1797 8x8 images are split 80/10/10 by a permutation fixed by `split_seed`; "test" is held out for
    evaluation (its captions are the evaluation prompts, its images the reference set).
    """

    colour = False  # ColourDigits: each image in one of the shapes colours, named in its caption

    def __init__(self, split: str = "train", resolution: int = 8, seed: int = 0, split_seed: int = 0):
        from sklearn.datasets import load_digits  # deferred: scikit-learn (~1 s), only a digits split needs it

        data = load_digits()
        order = np.random.default_rng(split_seed).permutation(len(data.images))
        lo, hi = SPLIT_FRACTIONS[split]
        idx = order[int(lo * len(order)) : int(hi * len(order))]
        images = torch.from_numpy(data.images[idx]).float() / 16.0 * 2 - 1  # (N, 8, 8) in [-1, 1]
        images = images[:, None].expand(-1, 3, -1, -1)
        self.colours: list[str] = [""] * len(idx)
        if self.colour:  # a colour per image from (seed, image id): the same image has it in every split draw
            names = list(COLOURS)
            self.colours = [names[np.random.default_rng([seed, int(k)]).integers(len(names))] for k in idx]
            rgb = torch.tensor([COLOURS[c] for c in self.colours])[:, :, None, None]  # (N, 3, 1, 1) in [0, 1]
            images = (images + 1) / 2 * rgb * 2 - 1  # ink in the colour, background stays -1
        if resolution != 8:
            images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
        self.images = images.contiguous()
        self.labels = torch.from_numpy(data.target[idx]).long()
        self.split, self.seed = split, seed

    def __len__(self) -> int:
        return len(self.labels)

    def captions(self) -> list[str]:
        """Every caption the split can produce (all synonyms of its digits, in their colours)."""
        return sorted({c for i in range(len(self)) for c in self.caption_options(i)})

    def caption_options(self, i: int) -> tuple[str, ...]:
        """Item i's possible captions: its digit's synonyms (after its colour, if coloured)."""
        colour = f"{self.colours[i]} " if self.colours[i] else ""
        return tuple(class_caption(colour + n) for n in DIGIT_SYNONYMS[int(self.labels[i])])

    def item(self, i: int, epoch: int = 0) -> dict:
        """Item i with the synonym drawn for `epoch` (training redraws it every pass over the data)."""
        caption = draw(self.caption_options(i), self.seed, i, epoch)
        return {"image": self.images[i], "caption": caption, "label": int(self.labels[i])}

    def __getitem__(self, i: int) -> dict:
        return self.item(i)


class ColourDigits(Digits):
    """`colour_digits`: Digits in colour (see the module docstring)."""

    colour = True
