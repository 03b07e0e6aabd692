"""Image files to model inputs: the one home of decoding, resizing and cropping for the raw-data readers."""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps

from rfsweep.data import DataError


def load_image(path: str | Path | IO[bytes], resolution: int, name: str | None = None) -> torch.Tensor:
    """An image file (or file object; `name` says where it came from) -> (3, R, R) in [-1, 1]: RGB, the largest
    centred square, resized with antialiasing (bicubic), the usual preprocessing of diffusion training at 256x256."""
    try:
        with Image.open(path) as im:
            im = ImageOps.fit(im.convert("RGB"), (resolution, resolution), method=Image.Resampling.BICUBIC)
    except OSError as e:  # missing, truncated, not an image
        raise DataError(f"data.path: image {name or path} cannot be read ({type(e).__name__}: {e})") from e
    return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1


def halves(items: list, split: str) -> list:
    """The held-out set of a source that has one (ImageNet val, COCO-2014 val), split in two interleaved halves:
    `val` (even positions: validation loss, the real-images floor) and `test` (odd: evaluation prompts and
    reference images)."""
    return items[0::2] if split == "val" else items[1::2]
