"""`atomic_save_tensors` writes a safetensors file tensor by tensor: no second copy of the tensors in memory (rank 0
writes the whole best weights of a paper-scale model with it). safetensors before 0.8 copied every tensor to a Python
bytes object before writing (`_flatten` -> `_tobytes`: twice the weights in host memory); pyproject.toml requires
0.8, and the allocation test below fails on 0.7 (a 32 MiB save traces 32 MiB of bytes there, 0.07 MiB on 0.8)."""

from __future__ import annotations

import re
import tracemalloc
from importlib.metadata import version
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.version import Version
from safetensors.torch import load_file

from rfsweep.atomic import atomic_save_tensors

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_safetensors_is_at_least_the_pinned_one_that_streams():
    deps = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M).group(1)
    pins = [Requirement(d) for d in re.findall(r'^\s*"([^"]+)"', deps, re.M)]
    pin = next(r for r in pins if r.name == "safetensors")
    assert pin.specifier.contains(Version("0.8.0")) and not pin.specifier.contains(Version("0.7.0")), pin
    assert pin.specifier.contains(Version(version("safetensors"))), (version("safetensors"), str(pin))


def test_atomic_save_tensors_allocates_no_copy_of_the_tensors(tmp_path):
    tensors = {f"w{i}": torch.full((1 << 20,), float(i)) for i in range(8)}  # 8 x 4 MiB
    size = sum(t.nbytes for t in tensors.values())
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    atomic_save_tensors(tensors, tmp_path / "w.safetensors", metadata={"step": "3"})
    peak = tracemalloc.get_traced_memory()[1] - before
    if not tracing:
        tracemalloc.stop()
    assert peak < size / 16, f"saving {size / 2**20:.0f} MiB allocated {peak / 2**20:.1f} MiB"
    back = load_file(tmp_path / "w.safetensors")
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], v) for k, v in tensors.items())
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # the temporary file renamed over it
