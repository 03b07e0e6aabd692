"""Pre-encoded data (App. E.1 of the paper): latents and text embeddings computed once, for datasets of any size.

Layout of a folder, one subfolder per split:

    <root>/<split>/plan.json               the encoding (autoencoder, encoders, resolution, dtype: `signature`),
                                           the item and caption counts, the shard sizes; written first
    <root>/<split>/captions.txt            the split's distinct captions, one a line (their index is their id)
    <root>/<split>/options.safetensors     (n, m) int32: each item's candidate caption ids (-1 pads)
    <root>/<split>/items-<k>.safetensors   latents (fp16) of items [k S, (k + 1) S), and, for the evaluation
                                           splits, their images (uint8): FID's reference and the real-images floor
    <root>/<split>/text-<j>.safetensors    tokens_e, pooled_e (fp16) of every encoder e for captions [j T, (j + 1) T)
    <root>/<split>/complete.json           written last: the split is whole

Text embeddings are stored once per distinct caption (ImageNet has a few thousand; SD3's embeddings are ~1 MB each),
and an item keeps every caption it can have: training redraws one per pass with the draw online encoding uses
(`captions.draw`: a class's synonyms, one of COCO's captions), so pre-encoded and online runs see the same captions.

Encoding is resumable and parallel: shards are independent files written atomically; `--shard i/N` (e.g. a SLURM
array task) encodes every N-th shard; a rerun keeps complete shards and redoes an interrupted one; whichever task
finds every shard present writes `complete.json`. Training refuses a folder whose plan says it was encoded otherwise
than the training config (another autoencoder, encoders, resolution or dtype), or that is incomplete.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save, save_file
from torch.utils.data import DataLoader, Dataset, Subset

from rfsweep.atomic import atomic_write
from rfsweep.data.captions import draw
from rfsweep.errors import DataError

FORMAT = 2
EVAL_SPLITS = ("val", "test")  # splits whose images are kept: evaluation's reference and real-images floor
ITEMS_PER_SHARD = 4096
TEXTS_PER_SHARD = 1024
ALLOWED = "a folder written by python -m rfsweep.cli.precompute"


def split_dir(root: str | Path, split: str) -> Path:
    return Path(root) / split


def _read_json(path: Path, root) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"data.path={root}: {path.name} is unreadable ({type(e).__name__}) (allowed: {ALLOWED})") \
            from None


# -- writing -------------------------------------------------------------------------------------------------------
def _options(dataset: Dataset, i: int) -> tuple[str, ...]:
    """Item i's candidate captions: the reader's own `caption_options` (through a Subset too), else its caption."""
    if hasattr(dataset, "caption_options"):
        return tuple(dataset.caption_options(i))
    if isinstance(dataset, Subset) and hasattr(dataset.dataset, "caption_options"):
        return tuple(dataset.dataset.caption_options(dataset.indices[i]))
    return (dataset[i]["caption"],)


def plan_split(dataset: Dataset, signature: dict, keep_images: bool, seed: int) -> tuple[dict, list[str], torch.Tensor]:
    """The split's plan: (plan, distinct captions, options (n, m) int32). Deterministic for a dataset."""
    options = [_options(dataset, i) for i in range(len(dataset))]
    ids: dict[str, int] = {}
    for opts in options:
        for c in opts:
            ids.setdefault(" ".join(c.split()), len(ids))
    width = max((len(o) for o in options), default=1)
    table = torch.full((len(options), width), -1, dtype=torch.int32)
    for i, opts in enumerate(options):
        table[i, : len(opts)] = torch.tensor([ids[" ".join(c.split())] for c in opts], dtype=torch.int32)
    plan = {"format": FORMAT, "signature": signature, "items": len(options), "captions": len(ids),
            "items_per_shard": ITEMS_PER_SHARD, "texts_per_shard": TEXTS_PER_SHARD, "images": keep_images,
            "seed": seed}
    return plan, list(ids), table


def _ensure_plan(folder: Path, plan: dict, captions: list[str], options: torch.Tensor) -> None:
    """Write the plan files, or check that the ones there are this plan (a shard of another encoding would mix)."""
    path = folder / "plan.json"
    if path.is_file():
        old = _read_json(path, folder.parent)
        if old != plan:
            keys = sorted(k for k in plan.keys() | old.keys() if plan.get(k) != old.get(k))
            raise DataError(f"data.path={folder.parent}: {folder.name}/ was planned with another {', '.join(keys)} "
                            f"(allowed: the same encoding, or another folder)")
        return
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "captions.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(captions) + "\n")
    with atomic_write(folder / "options.safetensors") as f:
        f.write(save({"options": options.contiguous()}))
    with atomic_write(path, "w") as f:
        json.dump(plan, f, indent=1)


def _images(items: list[dict]) -> torch.Tensor:
    return torch.stack([it["image"] for it in items])


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 [0, 255]."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def precompute(dataset: Dataset, autoencoder, conditioner, root: str | Path, split: str, signature: dict | None = None,
               shard: tuple[int, int] = (0, 1), batch_size: int = 64, workers: int = 0, device: str = "cpu",
               dtype: torch.dtype = torch.float32, keep_images: bool | None = None, seed: int = 0) -> bool:
    """Encode this task's shards of a split (`shard` = (i, N): every N-th shard from i); returns True when the split
    is complete (this or another task wrote the last shard). Images are decoded by `workers` loader processes and
    encoded on `device` in `dtype`; latents and embeddings are stored in fp16."""
    keep_images = split in EVAL_SPLITS if keep_images is None else keep_images
    folder = split_dir(root, split)
    plan, captions, options = plan_split(dataset, signature or {}, keep_images, seed)
    _ensure_plan(folder, plan, captions, options)
    i, n_tasks = shard
    n_items, n_texts = math.ceil(plan["items"] / ITEMS_PER_SHARD), math.ceil(plan["captions"] / TEXTS_PER_SHARD)
    autoencoder.to(device)
    conditioner.to(device)
    vae = getattr(autoencoder, "vae", None)
    if vae is not None:
        vae.to(dtype)
    for k in range(i, n_items, n_tasks):
        path = folder / f"items-{k:05d}.safetensors"
        if path.is_file():
            continue  # written whole (atomic): done by an earlier run
        rows = range(k * ITEMS_PER_SHARD, min((k + 1) * ITEMS_PER_SHARD, plan["items"]))
        loader = DataLoader(Subset(dataset, rows), batch_size=batch_size, num_workers=workers, collate_fn=_images)
        latents, images = [], []
        for x in loader:
            z = autoencoder.encode(x.to(device, dtype if vae is not None else torch.float32))
            latents.append(z.float().cpu().half())
            if keep_images:
                images.append(to_uint8(x))
        tensors = {"latents": torch.cat(latents).contiguous()}
        if keep_images:
            tensors["images"] = torch.cat(images).contiguous()
        with atomic_write(path) as f:
            f.write(save(tensors))
    for j in range(i, n_texts, n_tasks):
        path = folder / f"text-{j:05d}.safetensors"
        if path.is_file():
            continue
        chunk = captions[j * TEXTS_PER_SHARD : (j + 1) * TEXTS_PER_SHARD]
        parts = [conditioner.encode(chunk[s : s + batch_size]) for s in range(0, len(chunk), batch_size)]
        tensors = {}
        for e in range(len(parts[0])):
            tensors[f"tokens_{e}"] = torch.cat([p[e][0] for p in parts]).float().cpu().half().contiguous()
            tensors[f"pooled_{e}"] = torch.cat([p[e][1] for p in parts]).float().cpu().half().contiguous()
        with atomic_write(path) as f:
            f.write(save(tensors))
    return finish(folder, n_items, n_texts)


def finish(folder: Path, n_items: int, n_texts: int) -> bool:
    """Write complete.json once every shard is there."""
    present = all((folder / f"items-{k:05d}.safetensors").is_file() for k in range(n_items)) and all(
        (folder / f"text-{j:05d}.safetensors").is_file() for j in range(n_texts))
    if present and not (folder / "complete.json").is_file():
        with atomic_write(folder / "complete.json", "w") as f:
            json.dump({"items_shards": n_items, "text_shards": n_texts}, f)
    return present


def write_encoded(root: str | Path, split: str, latents: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]],
                  captions: list[str], options: torch.Tensor, signature: dict | None = None,
                  images: torch.Tensor | None = None, seed: int = 0) -> None:
    """Write already encoded tensors in the layout (benchmarks and tests of the reader): latents (n, C, h, w), per
    encoder (tokens (c, L, D), pooled (c, P)) for the c distinct captions, options (n, m) caption ids."""
    folder = split_dir(root, split)
    plan = {"format": FORMAT, "signature": signature or {}, "items": len(latents), "captions": len(captions),
            "items_per_shard": ITEMS_PER_SHARD, "texts_per_shard": TEXTS_PER_SHARD, "images": images is not None,
            "seed": seed}
    _ensure_plan(folder, plan, captions, options.to(torch.int32))
    n_items, n_texts = math.ceil(len(latents) / ITEMS_PER_SHARD), math.ceil(len(captions) / TEXTS_PER_SHARD)
    for k in range(n_items):
        rows = slice(k * ITEMS_PER_SHARD, (k + 1) * ITEMS_PER_SHARD)
        tensors = {"latents": latents[rows].half().contiguous()}
        if images is not None:
            tensors["images"] = images[rows].contiguous()
        save_file(tensors, str(folder / f"items-{k:05d}.safetensors"))
    for j in range(n_texts):
        rows = slice(j * TEXTS_PER_SHARD, (j + 1) * TEXTS_PER_SHARD)
        save_file({**{f"tokens_{e}": t[rows].half().contiguous() for e, (t, _) in enumerate(parts)},
                   **{f"pooled_{e}": p[rows].half().contiguous() for e, (_, p) in enumerate(parts)}},
                  str(folder / f"text-{j:05d}.safetensors"))
    finish(folder, n_items, n_texts)


# -- reading -------------------------------------------------------------------------------------------------------
# The line breaks other than "\n" that `str.splitlines` splits on, in UTF-8 (and read_text turns "\r" into "\n")
_OTHER_BREAKS = (b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")


class Captions(Sequence):
    """A split's distinct captions as one UTF-8 buffer (captions.txt as written) and int64 offsets (n + 1): caption
    k is buffer[offsets[k] : offsets[k + 1] - 1], decoded when asked. A few objects whatever the count, so that loader
    workers, which touch every Python object they hold, do not copy-on-write a list of millions of strings."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray):
        self.buffer, self.offsets = buffer, offsets

    @classmethod
    def read(cls, path: Path) -> Captions:
        """The captions `read_text().splitlines()` gives, without building them. The writer joins them with "\\n"
        and `plan_split` collapses whitespace, so a caption holds no line break; a file with one (`write_encoded` of
        raw captions) goes through splitlines, which splits on more than "\\n", so that it reads as it always did."""
        data = path.read_bytes()
        if any(b in data for b in _OTHER_BREAKS):
            data = "".join(c + "\n" for c in path.read_text(encoding="utf-8").splitlines()).encode()
        else:
            decoder = codecs.getincrementaldecoder("utf-8")()  # undecodable fails here, as read_text did
            for k in range(0, len(data), 1 << 24):
                decoder.decode(data[k : k + (1 << 24)])
            decoder.decode(b"", final=True)
            if data and not data.endswith(b"\n"):
                data += b"\n"  # splitlines: a last line needs no terminator
        buffer = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(buffer == ord("\n")) + 1
        return cls(buffer, np.concatenate([np.zeros(1, dtype=np.int64), ends.astype(np.int64)]))

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes + self.offsets.nbytes

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, k: int) -> str:
        n = len(self)
        if not -n <= k < n:
            raise IndexError("caption index out of range")
        k = k % n
        return self.buffer[self.offsets[k] : self.offsets[k + 1] - 1].tobytes().decode()


def table_bytes(root: str | Path, split: str) -> int:
    """A split's `PrecomputedDataset.table_bytes` (captions buffer, offsets, options) from plan.json's caption count
    and the sizes of captions.txt and of options.safetensors' data, without building the dataset: what each loader
    worker holds, for a memory plan made before any job. Exact for the files the writer writes."""
    folder = split_dir(root, split)
    if not (folder / "plan.json").is_file():
        raise DataError(f"data.path={root}: no {split} split (allowed: {ALLOWED})")
    plan = _read_json(folder / "plan.json", root)
    with open(folder / "options.safetensors", "rb") as f:
        header = int.from_bytes(f.read(8), "little")  # safetensors: u64 header length, JSON header, the data
    options = (folder / "options.safetensors").stat().st_size - 8 - header
    return (folder / "captions.txt").stat().st_size + 8 * (plan["captions"] + 1) + options


class PrecomputedDataset(Dataset):
    """One split of a pre-encoded folder: items {"latents" (fp16), "parts": [(tokens_e, pooled_e)] (fp16),
    "caption"} (plus "image" in [-1, 1] where kept); the caption is drawn per pass among the item's options.
    `expect`: the training config's encoding signature; a folder encoded otherwise is refused with one line."""

    def __init__(self, root: str | Path, split: str, expect: dict | None = None):
        self.root, self.folder = Path(root), split_dir(root, split)
        if not (self.folder / "plan.json").is_file():
            raise DataError(f"data.path={root}: no {split} split (allowed: {ALLOWED})")
        plan = _read_json(self.folder / "plan.json", root)
        if not (self.folder / "complete.json").is_file():
            raise DataError(f"data.path={root}: the {split} split is incomplete (allowed: {ALLOWED} that ran to the "
                            f"end; rerun it, it resumes)")
        if expect is not None:
            _check_signature(root, split, plan.get("signature", {}), expect)
        self.n, self.s_items, self.s_text = plan["items"], plan["items_per_shard"], plan["texts_per_shard"]
        self.seed, self.has_images = plan.get("seed", 0), bool(plan["images"])
        self.captions = Captions.read(self.folder / "captions.txt")
        with safe_open(str(self.folder / "options.safetensors"), "np") as f:
            self.options = f.get_tensor("options")  # (n, m) int32, -1 pads: a row's ids are taken when asked
        if len(self.captions) != plan["captions"] or len(self.options) != self.n:
            raise DataError(f"data.path={root}: the {split} split's captions or options do not match its plan "
                            f"(allowed: {ALLOWED})")
        with self._open("text", 0) as f:
            self.n_enc = sum(k.startswith("tokens_") for k in f.keys())
        self._handles: dict = {}

    def _open(self, kind: str, k: int):
        path = self.folder / f"{kind}-{k:05d}.safetensors"
        try:
            return safe_open(str(path), "pt")
        except Exception as e:  # missing, truncated, not safetensors
            raise DataError(f"data.path={self.root}: {path.parent.name}/{path.name} is corrupt or unreadable "
                            f"({type(e).__name__}) (allowed: {ALLOWED})") from e

    def _handle(self, kind: str, k: int):
        if (kind, k) not in self._handles:
            self._handles[(kind, k)] = self._open(kind, k).__enter__()
        return self._handles[(kind, k)]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}  # handles do not pickle: each loader worker opens its own

    def __len__(self) -> int:
        return self.n

    @property
    def table_bytes(self) -> int:
        """The bytes of the caption and option tables: a loader worker's copy at most (the shards are mapped)."""
        return self.captions.nbytes + self.options.nbytes

    def _ids(self, i: int) -> tuple[int, ...]:
        return tuple(c for c in self.options[i].tolist() if c >= 0)

    def caption_options(self, i: int) -> tuple[str, ...]:
        return tuple(self.captions[c] for c in self._ids(i))

    def item(self, i: int, epoch: int = 0) -> dict:
        k, r = divmod(i, self.s_items)
        f = self._handle("items", k)
        cid = draw(self._ids(i), self.seed, i, epoch)
        t, row = divmod(cid, self.s_text)
        g = self._handle("text", t)
        out = {"latents": f.get_slice("latents")[r : r + 1][0], "caption": self.captions[cid],
               "parts": [(g.get_slice(f"tokens_{e}")[row : row + 1][0], g.get_slice(f"pooled_{e}")[row : row + 1][0])
                         for e in range(self.n_enc)]}
        if self.has_images:
            out["image"] = f.get_slice("images")[r : r + 1][0].float() / 127.5 - 1
        return out

    def __getitem__(self, i: int) -> dict:
        return self.item(i)


def _check_signature(root, split: str, have: dict, want: dict) -> None:
    flat_have, flat_want = _flat(have), _flat(want)
    diff = sorted(k for k in flat_want if flat_have.get(k) != flat_want.get(k))
    if diff:
        k = diff[0]
        raise DataError(f"data.path={root}: the {split} split was encoded with {k}={flat_have.get(k)!r}, the config "
                        f"has {flat_want.get(k)!r}{f' (and {len(diff) - 1} more)' if len(diff) > 1 else ''} "
                        f"(allowed: a folder encoded with this config's autoencoder, conditioning and resolution)")


def _flat(d, prefix: str = "") -> dict:
    if isinstance(d, dict):
        return {k2: v2 for k, v in d.items() for k2, v2 in _flat(v, f"{prefix}{k}.").items()}
    if isinstance(d, list):
        return {k2: v2 for i, v in enumerate(d) for k2, v2 in _flat(v, f"{prefix}{i}.").items()}
    return {prefix[:-1]: d}


def check_reference_images(root: str | Path, splits: tuple[str, ...] = EVAL_SPLITS, expect: dict | None = None) -> None:
    """Before any compute: evaluation on pre-encoded data needs the evaluation splits' images (DataError if not)."""
    for split in splits:
        if not PrecomputedDataset(root, split, expect).has_images:
            raise DataError(f"data.path={root}: the {split} split holds no reference images, which evaluation needs "
                            f"(allowed: eval=none, or re-encode with rfsweep.cli.precompute, which keeps them)")


