"""Readers of raw image folders: ImageNet (class-synonym captions, Sec. 5.1) and COCO-2014 captions; and the
precompute CLI that puts ImageNet training data and COCO validation / evaluation data into one folder."""

import json

import numpy as np
import pytest
from PIL import Image

from rfsweep.data import DataError, build_dataset
from rfsweep.data.captions import class_caption
from tests.helpers import run_cli, tiny

SYNSETS = {"n01": ("tench", "Tinca tinca"), "n02": ("goldfish", "Carassius auratus"), "n03": ("shark",)}


def _jpeg(path, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


@pytest.fixture
def imagenet(tmp_path):
    root = tmp_path / "imagenet"
    root.mkdir()
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {', '.join(n)}\n" for w, n in SYNSETS.items()))
    for k, w in enumerate(SYNSETS):
        for i in range(4):
            _jpeg(root / "train" / w / f"{w}_{i}.JPEG", (20, 12) if i % 2 else (12, 20), 10 * k + i)
        for i in range(2):
            _jpeg(root / "val" / w / f"ILSVRC2012_val_{k}{i}.JPEG", (16, 16), 100 + 10 * k + i)
    return root


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (5, 3, 9, 7)]
    anns = [{"id": 100 + 10 * im["id"] + j, "image_id": im["id"], "caption": f"image {im['id']} caption {j} "}
            for im in images for j in (2, 0, 1)]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": anns}))
    for im in images:
        _jpeg(root / "val2014" / im["file_name"], (24, 16), im["id"])
    return root


def test_imagenet_splits_images_and_synonym_captions(imagenet):
    train, val, test = (build_dataset("imagenet", s, 8, 0, str(imagenet)) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (12, 3, 3)
    assert not {p for p, _ in val.files} & {p for p, _ in test.files}
    it = train[5]
    assert it["image"].shape == (3, 8, 8) and -1 <= it["image"].min() and it["image"].max() <= 1
    names = SYNSETS[train.wnids[it["label"]]]
    drawn = {train.item(0, e)["caption"] for e in range(20)}
    assert drawn == {class_caption(n) for n in SYNSETS["n01"]}  # redrawn every pass, among the synonyms only
    assert train.item(5, 3)["caption"] == train.item(5, 3)["caption"] and it["caption"] in map(class_caption, names)
    assert set(train.captions()) == {class_caption(n) for ns in SYNSETS.values() for n in ns}


def test_coco_halves_and_captions(coco):
    val, test = (build_dataset("coco", s, 8, 0, str(coco)) for s in ("val", "test"))
    assert [p.name[-6:-4] for p, _ in val.items] == ["03", "07"]
    assert [p.name[-6:-4] for p, _ in test.items] == ["05", "09"]
    assert test[0]["caption"] == "image 5 caption 0" and test[0]["image"].shape == (3, 8, 8)
    assert val.item(1, 7)["caption"] == "image 7 caption 0"  # held-out splits: always the first caption
    with pytest.raises(DataError, match="captions_train2014.json"):
        build_dataset("coco", "train", 8, 0, str(coco))


def test_bad_raw_folders_fail_with_one_line(imagenet, tmp_path):
    (imagenet / "train" / "n01" / "n01_0.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="n01_0.JPEG cannot be read"):
        build_dataset("imagenet", "train", 8, 0, str(imagenet))[0]
    (imagenet / "LOC_synset_mapping.txt").unlink()
    for name, path, key in (("imagenet", imagenet, "LOC_synset_mapping.txt"), ("coco", None, "data.path=None")):
        with pytest.raises(DataError) as e:
            build_dataset(name, "val", 8, 0, None if path is None else str(path))
        assert key in str(e.value) and "allowed" in str(e.value) and "\n" not in str(e.value)


def test_imagenet_training_with_coco_evaluation_end_to_end(imagenet, coco, tmp_path):
    """The paper's arrangement: train on ImageNet, validate and evaluate on COCO-2014 val, all pre-encoded."""
    import subprocess
    import sys

    out = tmp_path / "pre"
    enc = ["conditioning=hash", "data.resolution=8"]
    for data, splits in ((["data=imagenet", "data.name=imagenet", f"data.path={imagenet}"], "train"),
                         (["data=coco", f"data.path={coco}"], "val,test")):
        r = subprocess.run([sys.executable, "-m", "rfsweep.cli.precompute", str(out), "--splits", splits, *data, *enc],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/items-*.safetensors")) == [
        "test/items-00000.safetensors", "train/items-00000.safetensors", "val/items-00000.safetensors"]
    assert all((out / s / "complete.json").is_file() for s in ("train", "val", "test"))
    r = subprocess.run([sys.executable, "-m", "rfsweep.cli.precompute", str(out), "--splits", "train,dev"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "error: --splits" in r.stderr and "allowed" in r.stderr
    ev = ["eval=embedded", "eval.n_samples=2", "eval.batch_size=2", "eval.settings=[[2,1.0]]", "eval.weights=[ema]",
          "trainer.n_val=2", "trainer.batch_size=4"]
    r = run_cli([*tiny(tmp_path, steps=2), "data.name=precomputed", f"data.path={out}", "data.label=imagenet", *ev])
    assert r.returncode == 0, r.stderr[-3000:]
    results = next((tmp_path / "runs").rglob("results.csv")).read_text()
    assert "imagenet" in results and "real images" in results
    assert (next((tmp_path / "runs").rglob("samples.txt"))).read_text().splitlines()[0] == "image 5 caption 0"


def _shards(root, n_shards=3, per_shard=4):
    import io
    import tarfile

    root.mkdir(parents=True)
    for s in range(n_shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard + 1):
                key = f"{s:05d}{i:04d}"
                files = {f"{key}.json": b"{}"}
                if i < per_shard:  # the last sample has no caption: skipped
                    files[f"{key}.txt"] = f"caption of {key}\n".encode()
                buf = io.BytesIO()
                Image.fromarray(np.full((10, 14, 3), 20 * i, np.uint8)).save(buf, format="JPEG")
                files[f"{key}.jpg"] = buf.getvalue()
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def test_cc12m_shards_are_read_by_index_and_the_index_cached(tmp_path, monkeypatch):
    import tarfile

    root = _shards(tmp_path / "cc12m")
    monkeypatch.setenv("RFSWEEP_CACHE", str(tmp_path / "cache"))
    train, val, test = (build_dataset("cc12m", s, 8, 0, str(root)) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (8, 2, 2)
    assert train[5]["caption"] == "caption of 000010001" and train[5]["image"].shape == (3, 8, 8)
    assert [test[i]["caption"] for i in range(2)] == ["caption of 000020001", "caption of 000020003"]
    assert len(list((tmp_path / "cache" / "cc12m-index").iterdir())) == 3
    with monkeypatch.context() as m:
        m.setattr(tarfile, "open", lambda *a, **k: 1 / 0)  # indexes come from the cache now
        assert len(build_dataset("cc12m", "train", 8, 0, str(root))) == 8
    (root / "00000.tar").write_bytes(b"\0" * 100 + b"garbage")
    with pytest.raises(DataError, match="00000.tar cannot be read"):
        build_dataset("cc12m", "train", 8, 0, str(root))
    for p in list(root.glob("*.tar"))[1:]:
        p.unlink()
    with pytest.raises(DataError, match="at least two"):
        build_dataset("cc12m", "val", 8, 0, str(root))
