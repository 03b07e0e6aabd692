"""The pre-encoded reader's caption and option tables (issue 24, host memory): one byte buffer, offsets and the
options array instead of Python lists, read exactly as the list-based reader read them."""

import pickle

import numpy as np
import pytest
import torch
from safetensors import safe_open

import rfsweep.data.precomputed as pc
from rfsweep.data import DataError
from rfsweep.data.captions import draw
from rfsweep.data.precomputed import Captions, PrecomputedDataset, table_bytes, write_encoded

CAPTIONS = ["a photo of a cat", "café crème", "日本の猫", "", "a photo of a dog", "naïve — dash", "x"]
OPTIONS = [[0, -1, -1], [1, 2, 3], [4, 5, 6], [2, -1, 5], [6, -1, -1], [0, 1, -1], [3, -1, -1], [5, 4, 0]]


def _write(root, captions, options, seed=7):
    n, c = len(options), len(captions)
    latents = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2)
    ids = torch.arange(c, dtype=torch.float32)
    parts = [(ids.view(c, 1, 1).expand(c, 3, 4), ids.view(c, 1).expand(c, 4)),
             (ids.view(c, 1, 1).expand(c, 2, 5), torch.zeros(c, 0))]  # row c holds c: the drawn caption's row
    write_encoded(root, "train", latents, parts, captions, torch.tensor(options, dtype=torch.int32), seed=seed)


def _reference(folder) -> tuple[list[str], list[tuple[int, ...]]]:
    """The list-based reader's tables, as it built them."""
    captions = (folder / "captions.txt").read_text().splitlines()
    with safe_open(str(folder / "options.safetensors"), "pt") as f:
        options = [tuple(int(x) for x in row if x >= 0) for row in f.get_tensor("options").tolist()]
    return captions, options


def test_reads_what_the_list_reader_read(tmp_path, monkeypatch):
    monkeypatch.setattr(pc, "ITEMS_PER_SHARD", 3)  # items and texts across shard boundaries
    monkeypatch.setattr(pc, "TEXTS_PER_SHARD", 2)
    _write(tmp_path, CAPTIONS, OPTIONS)
    ds = PrecomputedDataset(tmp_path, "train")
    captions, options = _reference(tmp_path / "train")
    assert len(ds) == len(OPTIONS) and list(ds.captions) == captions == CAPTIONS and len(ds.captions) == 7
    drawn = []
    monkeypatch.setattr(pc, "draw", lambda *a: drawn.append(a) or draw(*a))
    for i in range(len(ds)):
        assert ds.caption_options(i) == tuple(captions[c] for c in options[i])
        for epoch in range(5):
            item = ds.item(i, epoch)
            cid = draw(options[i], 7, i, epoch)
            assert item["caption"] == captions[cid] and float(item["parts"][0][0][0, 0]) == cid
            assert float(item["latents"][0, 0, 0]) == i
            args = drawn[-1]
            assert args == (options[i], 7, i, epoch) and type(args[0]) is tuple
            assert all(type(x) is int for x in args[0])
        assert ds[i]["caption"] == ds.item(i, 0)["caption"]
    assert {ds.item(1, e)["caption"] for e in range(20)} == {"café crème", "日本の猫", ""}  # several options drawn


@pytest.mark.parametrize("text", ["", "\n", "a", "a\nb", "a\nb\n", "\n\na\n\n", "é\n日本\n\n", "a\r\nb\r\n",
                                  "x\ra\n", "a\u2028b\n", "a\x85b\x0cc\x1dd\n", "a\rb", "a\r\n"])
def test_caption_lines_are_splitlines(tmp_path, text):
    path = tmp_path / "captions.txt"
    path.write_bytes(text.encode())
    table = Captions.read(path)
    assert list(table) == path.read_text().splitlines() and len(table) == len(path.read_text().splitlines())
    with pytest.raises(IndexError):
        table[len(table)]


def test_undecodable_captions_fail_when_read(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_bytes(b"ok\n\xff\n")
    with pytest.raises(UnicodeDecodeError):
        Captions.read(path)


def test_tables_hold_no_python_object_per_caption(tmp_path, monkeypatch):
    n = 100_000
    monkeypatch.setattr(pc, "ITEMS_PER_SHARD", n)
    monkeypatch.setattr(pc, "TEXTS_PER_SHARD", n)
    captions = [f"caption {k} é" for k in range(n)]
    latents, ids = torch.zeros(n, 1, 1, 1), torch.zeros(n, 1, 1)
    options = torch.stack([torch.arange(n), torch.arange(n).flip(0), torch.full((n,), -1)], 1).to(torch.int32)
    write_encoded(tmp_path, "train", latents, [(ids, ids[:, 0])], captions, options)
    ds = PrecomputedDataset(tmp_path, "train")
    seen, stack, largest = set(), list(vars(ds).values()), 0
    while stack:  # every Python object the dataset holds, but arrays' and handles' insides
        x = stack.pop()
        if id(x) in seen or isinstance(x, (np.ndarray, torch.Tensor, type)):
            continue
        seen.add(id(x))
        if isinstance(x, (list, tuple, set, dict)):
            largest = max(largest, len(x))
            stack.extend(x.values() if isinstance(x, dict) else x)
        elif hasattr(x, "__dict__"):
            stack.extend(vars(x).values())
    assert len(seen) < 100 and largest < 100, (len(seen), largest)
    assert ds.caption_options(n - 1) == (captions[n - 1], captions[0]) and ds.item(5, 2)["caption"] in captions
    assert ds.table_bytes == sum(len(c.encode()) + 1 for c in captions) + 8 * (n + 1) + 12 * n


def test_table_bytes_and_its_estimate_from_the_files(tmp_path):
    _write(tmp_path, CAPTIONS, OPTIONS)
    ds = PrecomputedDataset(tmp_path, "train")
    arrays = (ds.captions.buffer, ds.captions.offsets, ds.options)
    assert isinstance(ds.table_bytes, int) and ds.table_bytes == sum(a.nbytes for a in arrays)
    assert ds.options.shape == (len(OPTIONS), 3) and ds.options.dtype == np.int32
    assert abs(table_bytes(tmp_path, "train") - ds.table_bytes) <= 0.1 * ds.table_bytes
    with pytest.raises(DataError, match="no val split"):
        table_bytes(tmp_path, "val")


def test_pickled_dataset_reads_the_same_items(tmp_path):
    _write(tmp_path, CAPTIONS, OPTIONS)
    ds = PrecomputedDataset(tmp_path, "train")
    ds[0]  # opens handles, which do not pickle
    again = pickle.loads(pickle.dumps(ds))
    assert again.table_bytes == ds.table_bytes and len(again) == len(ds)
    for i in range(len(ds)):
        assert again.caption_options(i) == ds.caption_options(i)
        for epoch in range(3):
            a, b = again.item(i, epoch), ds.item(i, epoch)
            assert a["caption"] == b["caption"] and torch.equal(a["latents"], b["latents"])
            assert all(torch.equal(x, y) for p, q in zip(a["parts"], b["parts"]) for x, y in zip(p, q))


def test_tables_that_do_not_match_the_plan_are_refused(tmp_path):
    _write(tmp_path, CAPTIONS, OPTIONS)
    path = tmp_path / "train" / "captions.txt"
    path.write_text("\n".join(CAPTIONS[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="the train split's captions or options do not match its plan"):
        PrecomputedDataset(tmp_path, "train")
    path.write_text("\n".join(["a\u2028b", *CAPTIONS[1:]]) + "\n", encoding="utf-8")  # one line break too many
    with pytest.raises(DataError, match="do not match its plan"):
        PrecomputedDataset(tmp_path, "train")
