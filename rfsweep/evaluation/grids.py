"""Image grids: a plain grid of samples (one per evaluation setting) and a grid a person can read, each sample
upscaled (nearest neighbour, at least `tile` pixels) with its prompt under it (`samples.png`, `generate`)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from rfsweep.atomic import atomic_write


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = images.detach().float().cpu().add(1).div(2).clamp(0, 1)
    return x.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Images (B, 3, H, W) in [-1, 1] as one PNG grid; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images.detach().float().cpu().add(1).div(2).clamp(0, 1), nrow=nrow, padding=1)
    with atomic_write(path) as f:  # atomic, and asks the run folder's write fence
        Image.fromarray(grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(f, format="PNG")
    return path


def save_captioned_grid(images: torch.Tensor, captions: list[str], path: str | Path, nrow: int = 8,
                        tile: int = 64) -> Path:
    """Each image upscaled by an integer factor to at least `tile` pixels, its caption wrapped under it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(images).numpy()
    b, h, w = pixels.shape[:3]
    scale = max(1, -(-tile // min(h, w)))  # ceil: an 8x8 sample becomes 64x64
    cell_w = max(w * scale, 96)
    font = ImageFont.load_default()
    chars = max(8, cell_w // 6)
    lines = [textwrap.wrap(c, chars)[:3] or [""] for c in captions]
    text_h = 12 * max(len(ln) for ln in lines) + 4
    cols, rows = min(nrow, b), -(-b // nrow)
    sheet = Image.new("RGB", (cols * (cell_w + 4), rows * (h * scale + text_h + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(b):
        x0, y0 = (i % nrow) * (cell_w + 4) + 2, (i // nrow) * (h * scale + text_h + 4) + 2
        tile_img = Image.fromarray(pixels[i]).resize((w * scale, h * scale), Image.NEAREST)
        sheet.paste(tile_img, (x0 + (cell_w - w * scale) // 2, y0))
        for j, line in enumerate(lines[i]):
            draw.text((x0, y0 + h * scale + 2 + 12 * j), line, fill="black", font=font)
    with atomic_write(path) as f:  # atomic, and asks the run folder's write fence
        sheet.save(f, format="PNG")
    return path
