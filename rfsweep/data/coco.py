"""`coco`: COCO-2014 captions, the paper's source of validation data, evaluation prompts and reference images
(Sec. 5.1).

Layout (`data.path`): `annotations/captions_<part>2014.json` and `<part>2014/` image folders, part = val (for the
`val` and `test` splits: COCO-2014 val split into halves, `rfsweep.data.images.halves`) or train (for `train`).
Captions: each image has about five; training draws one per pass (a pure function of seed, index and pass), the
held-out splits always use the first (lowest annotation id), so prompts and reference captions are fixed.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.data import Dataset

from rfsweep.data import DataError
from rfsweep.data.captions import draw
from rfsweep.data.images import halves, load_image


def read_captions(root: Path, part: str) -> list[tuple[Path, tuple[str, ...]]]:
    """(image path, captions ordered by annotation id) for every captioned image, ordered by image id."""
    ann, folder = root / "annotations" / f"captions_{part}2014.json", root / f"{part}2014"
    try:
        data = json.loads(ann.read_text())
        files = {im["id"]: im["file_name"] for im in data["images"]}
        caps: dict[int, list[tuple[int, str]]] = {}
        for a in data["annotations"]:
            caps.setdefault(a["image_id"], []).append((a["id"], a["caption"].strip()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"data.path={root}: {ann.relative_to(root)} cannot be read ({type(e).__name__}) (allowed: "
                        f"a COCO folder with annotations/captions_{part}2014.json and {part}2014/)") from e
    return [(folder / files[i], tuple(c for _, c in sorted(caps[i]))) for i in sorted(caps) if i in files]


class COCO(Dataset):
    """Items: {"image": (3, R, R) in [-1, 1], "caption": str}."""

    def __init__(self, root: str | Path, split: str = "val", resolution: int = 256, seed: int = 0):
        items = read_captions(Path(root), "train" if split == "train" else "val")
        self.items = items if split == "train" else halves(items, split)
        self.split, self.resolution, self.seed = split, resolution, seed

    def __len__(self) -> int:
        return len(self.items)

    def caption_options(self, i: int) -> tuple[str, ...]:
        """Training draws one of the image's captions per pass; evaluation holds out the first."""
        captions = tuple(self.items[i][1])
        return captions if self.split == "train" else captions[:1]

    def item(self, i: int, epoch: int = 0) -> dict:
        caption = draw(self.caption_options(i), self.seed, i, epoch)
        return {"image": load_image(self.items[i][0], self.resolution), "caption": caption}

    def __getitem__(self, i: int) -> dict:
        return self.item(i)
