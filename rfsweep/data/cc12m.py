"""`cc12m`: Conceptual 12M as img2dataset writes it, webdataset shards `<data.path>/*.tar` holding `<key>.jpg` and
`<key>.txt` (the caption) per sample.

Items are read by index straight from the shards: each shard's member offsets are indexed once and cached
(`<cache>/cc12m-index/`, keyed by the shard's path, size and modification time). Splits: `train` is every shard
but the last; the last shard is held out and split into `val` and `test` halves (`rfsweep.data.images.halves`).
The paper validates and evaluates on COCO-2014 instead: `precompute --splits train` here and `--splits val,test`
from `data=coco` (README, "Real data and clusters").
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from torch.utils.data import Dataset

from rfsweep.atomic import atomic_write
from rfsweep.data import DataError, default_cache_dir
from rfsweep.data.images import halves, load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def shard_index(shard: Path, cache_dir: Path) -> list[tuple[int, int, int, int]]:
    """[(image offset, image size, caption offset, caption size)] of the shard's complete samples, in order."""
    st = shard.stat()
    key = hashlib.sha1(f"{shard.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    cached = cache_dir / "cc12m-index" / f"{key}.json"
    if cached.is_file():
        try:
            return [tuple(r) for r in json.loads(cached.read_text())]
        except (OSError, ValueError):
            pass  # damaged from outside: rebuilt below
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.isfile():
                    stem, _, ext = m.name.rpartition(".")
                    kind = "txt" if ext == "txt" else "img" if f".{ext.lower()}" in IMAGE_EXTENSIONS else None
                    if kind:
                        samples.setdefault(stem, {})[kind] = (m.offset_data, m.size)
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"data.path: shard {shard} cannot be read ({type(e).__name__}: {e})") from e
    rows = [(*s["img"], *s["txt"]) for s in samples.values() if "img" in s and "txt" in s]
    with atomic_write(cached, "w") as f:
        json.dump(rows, f)
    return rows


class CC12M(Dataset):
    """Items: {"image": (3, R, R) in [-1, 1], "caption": str}."""

    def __init__(self, root: str | Path, split: str = "train", resolution: int = 256, seed: int = 0,
                 cache_dir: str | Path | None = None):
        shards = sorted(Path(root).glob("*.tar"))
        if len(shards) < 2:
            raise DataError(f"data.path={root}: {len(shards)} .tar shard(s) (allowed: a folder of at least two "
                            f"img2dataset webdataset shards; the last is held out for val/test)")
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        use = shards[:-1] if split == "train" else shards[-1:]
        items = [(s, *row) for s in use for row in shard_index(s, cache)]
        self.items = items if split == "train" else halves(items, split)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.items)

    def caption_options(self, i: int) -> tuple[str, ...]:
        shard, _, _, txt_at, txt_size = self.items[i]
        with open(shard, "rb") as f:
            f.seek(txt_at)
            return (f.read(txt_size).decode("utf-8", errors="replace").strip(),)

    def item(self, i: int, epoch: int = 0) -> dict:
        shard, img_at, img_size, _, _ = self.items[i]
        with open(shard, "rb") as f:
            f.seek(img_at)
            data = f.read(img_size)
        image = load_image(io.BytesIO(data), self.resolution, name=f"{shard}@{img_at}")
        return {"image": image, "caption": self.caption_options(i)[0]}

    def __getitem__(self, i: int) -> dict:
        return self.item(i)
