"""Datasets and the data module.

Every dataset item is either raw, `{"image": (3, H, W) in [-1, 1], "caption": str}`, encoded online by the
autoencoder and conditioner, or pre-encoded, `{"latents": (C, h, w), "parts": [...]}` (see `precomputed`).
Either way training consumes `rfsweep.types.Batch(latents, context, pooled)`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rfsweep.errors import DataError  # noqa: F401 (raised here, defined in the one home of user errors)

if TYPE_CHECKING:
    from torch.utils.data import Dataset

# Every dataset class is imported when a split is built (its module imports torch): naming and checking data.name
# (the config's checks, `python -m rfsweep --help`) imports none of them. A new reader is a line here, its module and
# a config.
EMBEDDED = {"digits": "rfsweep.data.digits:Digits", "colour_digits": "rfsweep.data.digits:ColourDigits",
            "shapes": "rfsweep.data.shapes:Shapes"}
RAW_READERS = {"imagenet": "rfsweep.data.imagenet:ImageNet", "cc12m": "rfsweep.data.cc12m:CC12M",
               "coco": "rfsweep.data.coco:COCO"}
SPLITS = ("train", "val", "test")


def dataset_names() -> tuple[str, ...]:
    """What data.name may be: an embedded set, a raw reader, or precomputed."""
    return (*EMBEDDED, *RAW_READERS, "precomputed")


def needs_path(name: str) -> bool:
    return name in RAW_READERS or name == "precomputed"


def default_cache_dir() -> Path:
    """rfsweep's cache (reference statistics, caption embeddings, shard indexes): $RFSWEEP_CACHE or ~/.cache/rfsweep,
    as conf/config.yaml's paths.cache."""
    return Path(os.environ.get("RFSWEEP_CACHE") or Path.home() / ".cache" / "rfsweep")


def _class(path: str):
    """The class a registry entry (`<module>:<class>`) names, its module imported now."""
    module, cls = path.split(":")
    return getattr(importlib.import_module(module), cls)


def _raw(name: str):
    """The reader class of a raw dataset (a DataError for a name that has none)."""
    if name not in RAW_READERS:
        raise DataError(f"data.name={name!r} has no reader (allowed: {', '.join(RAW_READERS)})")
    return _class(RAW_READERS[name])


def build_dataset(name: str, split: str, resolution: int = 8, seed: int = 0, path: str | None = None,
                  expect: dict | None = None) -> Dataset:
    """One split of a dataset by name: the embedded `digits` / `colour_digits` / `shapes`, raw `imagenet` / `cc12m` /
    `coco` files at `path`, or `precomputed` (pre-encoded) at `path`, checked against the config's encoding `expect`."""
    if split not in SPLITS:
        raise DataError(f"data split={split!r} is unknown (allowed: {', '.join(SPLITS)})")
    if name in EMBEDDED:
        return _class(EMBEDDED[name])(split=split, resolution=resolution, seed=seed)
    if needs_path(name):
        if path is None or not Path(path).is_dir():
            kind = "a folder of pre-encoded shards" if name == "precomputed" else f"the {name} folder"
            raise DataError(f"data.path={path!r} does not exist (allowed: {kind})")
    if name in RAW_READERS:
        return _raw(name)(path, split=split, resolution=resolution, seed=seed)
    if name == "precomputed":
        from rfsweep.data.precomputed import PrecomputedDataset  # deferred: torch and safetensors, as the classes above

        return PrecomputedDataset(path, split, expect)
    raise DataError(f"data.name={name!r} is unknown (allowed: {', '.join(dataset_names())})")
