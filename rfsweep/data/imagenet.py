"""`imagenet`: ImageNet-1k from its image folders, as text-to-image data (Sec. 5.1): caption "a photo of a <name>"
with the name drawn among the class's synonyms, redrawn every pass (a pure function of seed, index and pass).

Layout (`data.path`): `LOC_synset_mapping.txt` ("n01440764 tench, Tinca tinca": the WordNet id, then the class's
synonyms), `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` (the validation images sorted into class folders, as
torchvision's ImageFolder expects). Splits: `train` is train/; ImageNet's validation images are split into
`val` and `test` halves (`rfsweep.data.images.halves`).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from rfsweep.data import DataError
from rfsweep.data.captions import class_caption, draw
from rfsweep.data.images import halves, load_image

SYNSETS = "LOC_synset_mapping.txt"
EXTENSIONS = {".jpeg", ".jpg", ".png"}


def read_synsets(root: Path) -> dict[str, tuple[str, ...]]:
    path = root / SYNSETS
    if not path.is_file():
        raise DataError(f"data.path={root}: no {SYNSETS} (allowed: an ImageNet folder with {SYNSETS}, train/, val/)")
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            wnid, _, names = line.strip().partition(" ")
            out[wnid] = tuple(n.strip() for n in names.split(",") if n.strip())
    return out


class ImageNet(Dataset):
    """Items: {"image": (3, R, R) in [-1, 1], "caption": str, "label": int (index of the sorted WordNet ids)}."""

    def __init__(self, root: str | Path, split: str = "train", resolution: int = 256, seed: int = 0):
        root = Path(root)
        self.synonyms = read_synsets(root)
        wnids = sorted(self.synonyms)
        folder = root / ("train" if split == "train" else "val")
        if not folder.is_dir():
            raise DataError(f"data.path={root}: no {folder.name}/ folder (allowed: an ImageNet folder with "
                            f"{SYNSETS}, train/<wnid>/, val/<wnid>/)")
        files = [(p, label) for label, w in enumerate(wnids) if (folder / w).is_dir()
                 for p in sorted((folder / w).iterdir()) if p.suffix.lower() in EXTENSIONS]
        files = files if split == "train" else halves(files, split)
        if not files:
            raise DataError(f"data.path={root}: no images in {folder.name}/<wnid>/ for split {split}")
        self.files, self.wnids, self.resolution, self.seed = files, wnids, resolution, seed

    def __len__(self) -> int:
        return len(self.files)

    def captions(self) -> list[str]:
        """Every caption the split can produce (all synonyms of its classes): few enough to encode once."""
        return sorted({class_caption(n) for _, y in self.files for n in self.synonyms[self.wnids[y]]})

    def caption_options(self, i: int) -> tuple[str, ...]:
        """Item i's possible captions: its class's synonyms (Sec. 5.1)."""
        return tuple(class_caption(n) for n in self.synonyms[self.wnids[self.files[i][1]]])

    def item(self, i: int, epoch: int = 0) -> dict:
        path, label = self.files[i]
        caption = draw(self.caption_options(i), self.seed, i, epoch)
        return {"image": load_image(path, self.resolution), "caption": caption, "label": label}

    def __getitem__(self, i: int) -> dict:
        return self.item(i)
