"""`shapes`: a procedural text-to-image set standing in for CC12M and for the COCO evaluation prompts.

Each image holds one or two coloured shapes; two shapes are placed side by side or one above the other,
and the caption says so: "a red circle left of a blue square", "a green triangle above a yellow circle",
"a white square". Everything is a pure function of (seed, split, index): nothing is stored or downloaded.
Shapes are rendered at 4x the resolution and box-filtered down, so edges stay readable at 8x8.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

COLOURS = {
    "red": (1.0, 0.1, 0.1),
    "green": (0.1, 0.85, 0.1),
    "blue": (0.15, 0.25, 1.0),
    "yellow": (1.0, 0.9, 0.1),
    "white": (1.0, 1.0, 1.0),
    "purple": (0.7, 0.1, 0.9),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = {"left of": (0, 1), "above": (1, 0)}  # (row offset, col offset) of the second slot
SPLIT_SIZES = {"train": 8192, "val": 512, "test": 1024}
SPLIT_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_003}
SUPERSAMPLE = 4


def _mask(shape: str, size: int) -> np.ndarray:
    """Boolean mask of `shape` filling a size x size box."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c, r = size / 2, size * 0.42
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= r**2
    if shape == "square":
        return (abs(yy - c) <= r * 0.85) & (abs(xx - c) <= r * 0.85)
    top, bottom = c - r, c + r  # upright isosceles triangle
    half_width = (yy - top) / (bottom - top) * r
    return (yy >= top) & (yy <= bottom) & (abs(xx - c) <= half_width)


def render(objects: list[tuple[str, str]], relation: str | None, resolution: int) -> torch.Tensor:
    """(3, R, R) image in [-1, 1] of one object centred, or two in the slots `relation` names."""
    big = resolution * SUPERSAMPLE
    canvas = np.zeros((3, big, big), dtype=np.float32)
    if relation is None:
        slots = [(big // 4, big // 4, big // 2)]
    else:
        dr, dc = RELATIONS[relation]
        half = big // 2
        off = (big - half) // 2
        first = (off * dc, off * dr)  # the orthogonal axis is centred
        slots = [(first[0], first[1], half), (first[0] + half * dr, first[1] + half * dc, half)]
    for (colour, shape), (r, c, s) in zip(objects, slots):
        m = _mask(shape, s)
        for ch, v in enumerate(COLOURS[colour]):
            canvas[ch, r : r + s, c : c + s][m] = v
    img = torch.from_numpy(canvas)[None]
    img = F.avg_pool2d(img, SUPERSAMPLE)[0]
    return img * 2 - 1


def caption(objects: list[tuple[str, str]], relation: str | None) -> str:
    words = [f"a {colour} {shape}" for colour, shape in objects]
    return words[0] if relation is None else f"{words[0]} {relation} {words[1]}"


class Shapes(Dataset):
    """Items: {"image": (3, R, R) in [-1, 1], "caption": str}; deterministic from (seed, split, index)."""

    def __init__(self, split: str = "train", resolution: int = 8, seed: int = 0, size: int | None = None):
        self.split, self.resolution, self.seed = split, resolution, seed
        self.size = size or SPLIT_SIZES[split]
        self._items: dict[int, dict] = {}  # items are deterministic: memoise them

    def __len__(self) -> int:
        return self.size

    def scene(self, i: int) -> tuple[list[tuple[str, str]], str | None]:
        rng = np.random.default_rng([self.seed, SPLIT_OFFSETS[self.split] + i])
        n = 1 if rng.random() < 0.3 else 2
        colours = rng.choice(list(COLOURS), size=n, replace=False)
        objects = [(str(col), str(rng.choice(SHAPES))) for col in colours]
        relation = None if n == 1 else str(rng.choice(list(RELATIONS)))
        return objects, relation

    def captions(self) -> list[str]:
        """Every caption of the split (cheap: no rendering)."""
        return [caption(*self.scene(i)) for i in range(self.size)]

    def caption_options(self, i: int) -> tuple[str, ...]:
        return (caption(*self.scene(i)),)

    def item(self, i: int, epoch: int = 0) -> dict:
        if i not in self._items:
            objects, relation = self.scene(i)
            image = render(objects, relation, self.resolution)
            self._items[i] = {"image": image, "caption": caption(objects, relation)}
        return dict(self._items[i])

    def __getitem__(self, i: int) -> dict:
        return self.item(i)
