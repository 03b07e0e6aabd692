import pytest
import torch

from rfsweep.data import DataError, build_dataset
from rfsweep.data.captions import DIGIT_SYNONYMS
from rfsweep.data.precomputed import PrecomputedDataset, check_reference_images
from rfsweep.data.shapes import COLOURS, SHAPES, Shapes
from rfsweep.data.stream import SampleStream, StreamSampler


def test_digits_splits_are_disjoint_and_captioned_with_synonyms():
    splits = {s: build_dataset("digits", s) for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == 1797
    keys = [{tuple(d.images[i].flatten().tolist()) for i in range(len(d))} for d in splits.values()]
    assert len(keys[0] & keys[2]) < 5  # the UCI set has a handful of duplicate images, nothing more
    d = splits["train"]
    names = {d.item(0, e)["caption"] for e in range(40)}
    label = d[0]["label"]
    assert names <= {f"a photo of a {n}" for n in DIGIT_SYNONYMS[label]} and len(names) > 1
    x = d[0]["image"]
    assert x.shape == (3, 8, 8) and x.min() >= -1 and x.max() <= 1


def test_shapes_deterministic_and_caption_matches_content():
    a, b = Shapes("train", seed=3), Shapes("train", seed=3)
    for i in range(20):
        assert a[i]["caption"] == b[i]["caption"] and torch.equal(a[i]["image"], b[i]["image"])
    test = Shapes("test", seed=3)
    assert {a[i]["caption"] for i in range(200)} != {test[i]["caption"] for i in range(200)}
    for i in range(50):  # a one-object caption names the colour of the brightest pixel
        objects, relation = a.scene(i)
        if relation is None:
            (colour, shape), = objects
            img = Shapes("train", resolution=16, seed=3)[i]["image"]
            centre = (img[:, 7:9, 7:9].mean((1, 2)) + 1) / 2
            assert torch.allclose(centre, torch.tensor(COLOURS[colour]), atol=0.35), (colour, centre)
            assert shape in SHAPES


def test_stream_is_a_pure_function_of_position():
    ds = build_dataset("digits", "train")
    s1, s2 = SampleStream(ds, seed=1), SampleStream(ds, seed=1)
    batches = list(StreamSampler(16, 0, 200))
    resumed = list(StreamSampler(16, 120, 200))
    assert batches[120:] == resumed
    p = 16 * 150  # second pass over the data: new order, captions redrawn
    assert s1[p]["caption"] == s2[p]["caption"] and torch.equal(s1[p]["image"], s2[p]["image"])
    first_pass = [s1[i]["label"] for i in range(len(ds))]
    assert sorted(first_pass) == sorted(ds.labels.tolist())


def test_unknown_dataset_and_missing_path_fail_clearly():
    for name, path, key in (("imagenet1k", None, "data.name"), ("precomputed", "/nonexistent", "data.path")):
        try:
            build_dataset(name, "train", path=path)
        except DataError as e:
            assert key in str(e) and "allowed" in str(e) and "\n" not in str(e)
        else:
            raise AssertionError("expected DataError")


def _encoders():
    from rfsweep.conditioning import Conditioner
    from rfsweep.text_encoders import HashTextEncoder

    return Conditioner([HashTextEncoder(16, 8), HashTextEncoder(24, 8, kind="t5", seed=1)], cache=False)


def test_precompute_roundtrip_with_captions_stored_once(tmp_path, monkeypatch):
    import pickle

    import rfsweep.data.precomputed as pc
    from rfsweep.autoencoders import IdentityAutoencoder

    monkeypatch.setattr(pc, "ITEMS_PER_SHARD", 12)
    monkeypatch.setattr(pc, "TEXTS_PER_SHARD", 8)
    ds, cond = build_dataset("digits", "train"), _encoders()
    ds = torch.utils.data.Subset(ds, range(40))
    assert pc.precompute(ds, IdentityAutoencoder(), cond, tmp_path, "train", {"kind": "test"}, batch_size=16)
    folder = tmp_path / "train"
    assert sorted(p.name for p in folder.glob("items-*")) == [f"items-0000{k}.safetensors" for k in range(4)]
    pre = PrecomputedDataset(tmp_path, "train")
    raw = ds.dataset
    n_captions = len({c for i in range(40) for c in raw.caption_options(i)})
    assert len(pre) == 40 and len(pre.captions) == n_captions < 40 * 5  # synonyms of ten digits, once each
    for i in (0, 11, 12, 23, 36, 39):  # across shard boundaries
        assert torch.allclose(pre[i]["latents"].float(), raw[i]["image"], atol=4e-3)  # fp16
    for epoch in range(6):  # the synonym redrawn every pass, as the raw reader draws it
        assert [pre.item(i, epoch)["caption"] for i in range(40)] == [raw.item(i, epoch)["caption"] for i in range(40)]
    item = pre.item(13, 3)
    for (t, p), (t2, p2) in zip(cond.encode([item["caption"]]), item["parts"]):
        assert torch.allclose(t[0], t2.float(), atol=2e-3) and torch.allclose(p[0], p2.float(), atol=2e-3)
    assert torch.equal(pickle.loads(pickle.dumps(pre))[13]["latents"], pre[13]["latents"])  # data-loader workers
    assert not pre.has_images and "image" not in pre[3]  # the training split keeps no images
    shapes = Shapes("val", size=20)
    pc.precompute(shapes, IdentityAutoencoder(), cond, tmp_path, "test", {"kind": "test"})  # evaluation splits do
    test = PrecomputedDataset(tmp_path, "test")
    assert test.has_images and (test[3]["image"] - shapes[3]["image"]).abs().max() <= 1 / 127.5
    check_reference_images(tmp_path, ("test",))
    with pytest.raises(DataError, match="the train split holds no reference images"):
        check_reference_images(tmp_path, ("train",))
    with pytest.raises(DataError, match="no val split"):
        check_reference_images(tmp_path, ("val",))


def test_precompute_shards_in_parallel_and_resumes(tmp_path, monkeypatch):
    import rfsweep.data.precomputed as pc
    from rfsweep.autoencoders import IdentityAutoencoder

    monkeypatch.setattr(pc, "ITEMS_PER_SHARD", 8)
    monkeypatch.setattr(pc, "TEXTS_PER_SHARD", 8)
    ds, cond = Shapes("val", size=30), _encoders()
    assert not pc.precompute(ds, IdentityAutoencoder(), cond, tmp_path, "train", {}, shard=(1, 2))  # shards 1, 3
    with pytest.raises(DataError, match="incomplete"):
        PrecomputedDataset(tmp_path, "train")
    folder = tmp_path / "train"
    assert sorted(p.name for p in folder.glob("items-*")) == ["items-00001.safetensors", "items-00003.safetensors"]
    stamp = (folder / "items-00001.safetensors").stat().st_mtime_ns
    (folder / ".items-00000.safetensors.x.tmp").write_bytes(b"interrupted")  # a shard cut short by a kill
    assert pc.precompute(ds, IdentityAutoencoder(), cond, tmp_path, "train", {}, shard=(0, 2))  # the other task
    assert (folder / "items-00001.safetensors").stat().st_mtime_ns == stamp  # complete shards are kept
    whole = tmp_path / "one"
    pc.precompute(ds, IdentityAutoencoder(), cond, whole, "train", {})
    a, b = PrecomputedDataset(tmp_path, "train"), PrecomputedDataset(whole, "train")
    assert all(torch.equal(a[i]["latents"], b[i]["latents"]) and a[i]["caption"] == b[i]["caption"]
               for i in range(30))
    with pytest.raises(DataError, match="planned with another"):  # another data set into the same folder
        pc.precompute(Shapes("val", size=31), IdentityAutoencoder(), cond, tmp_path, "train", {})
    (folder / "items-00002.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match="items-00002.safetensors is corrupt"):
        PrecomputedDataset(tmp_path, "train")[17]


def test_a_folder_encoded_otherwise_is_refused(tmp_path):
    from rfsweep.autoencoders import IdentityAutoencoder
    from rfsweep.data.precomputed import precompute

    sig = {"autoencoder": {"name": "a"}, "resolution": 8, "conditioning": {"context_dim": 24}}
    precompute(Shapes("val", size=5), IdentityAutoencoder(), _encoders(), tmp_path, "train", sig)
    PrecomputedDataset(tmp_path, "train", expect=sig)
    with pytest.raises(DataError, match=r"encoded with conditioning.context_dim=24, the config has 48") as e:
        PrecomputedDataset(tmp_path, "train", expect={**sig, "conditioning": {"context_dim": 48}})
    assert "\n" not in str(e.value)
