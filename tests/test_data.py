import pytest
import torch

from rfsweep.data import DataError, build_dataset
from rfsweep.data.captions import DIGIT_SYNONYMS
from rfsweep.data.precomputed import PrecomputedDataset, check_reference_images, precompute
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


def test_precompute_roundtrip(tmp_path):
    import pickle

    from rfsweep.autoencoders import IdentityAutoencoder
    from rfsweep.conditioning import Conditioner
    from rfsweep.text_encoders import HashTextEncoder

    ds = Shapes("val", size=40)
    cond = Conditioner([HashTextEncoder(16, 8), HashTextEncoder(24, 8, kind="t5", seed=1)], cache=False)
    precompute(ds, IdentityAutoencoder(), cond, tmp_path, "train", batch_size=16, shard_size=12)
    assert sorted(p.name for p in tmp_path.glob("train-*.safetensors")) == [f"train-0000{k}.safetensors"
                                                                         for k in range(4)]  # 12 + 12 + 12 + 4
    pre = PrecomputedDataset(tmp_path, "train")
    assert len(pre) == 40 and [pre[i]["caption"] for i in range(40)] == [ds[i]["caption"] for i in range(40)]
    for i in (0, 11, 12, 23, 36, 39):  # across shard boundaries
        assert torch.allclose(pre[i]["latents"], ds[i]["image"])
    parts = cond.encode([ds[13]["caption"]])
    for (t, p), (t2, p2) in zip(parts, pre[13]["parts"]):
        assert torch.allclose(t[0], t2, atol=2e-3) and torch.allclose(p[0], p2, atol=2e-3)  # stored in fp16
    assert torch.equal(pickle.loads(pickle.dumps(pre))[13]["latents"], pre[13]["latents"])  # data-loader workers
    assert not pre.has_images and "image" not in pre[3]  # the training split keeps no images
    precompute(ds, IdentityAutoencoder(), cond, tmp_path, "test", batch_size=16)  # evaluation splits do
    test = PrecomputedDataset(tmp_path, "test")
    assert test.has_images and (test[3]["image"] - ds[3]["image"]).abs().max() <= 1 / 127.5
    check_reference_images(tmp_path, ("test",))
    with pytest.raises(DataError, match="the train shards hold no reference images"):
        check_reference_images(tmp_path, ("train",))
    with pytest.raises(DataError, match="no val shards"):
        check_reference_images(tmp_path, ("val",))
    precompute(Shapes("val", size=5), IdentityAutoencoder(), cond, tmp_path, "train", shard_size=12)
    assert len(PrecomputedDataset(tmp_path, "train")) == 5  # a rerun replaces the split whole
    (tmp_path / "train-00001.safetensors").write_bytes((tmp_path / "train-00000.safetensors").read_bytes())
    with pytest.raises(DataError, match="the train split is incomplete"):  # shards and captions disagree
        PrecomputedDataset(tmp_path, "train")
    (tmp_path / "train-00000.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match="train-00000.safetensors is corrupt"):
        PrecomputedDataset(tmp_path, "train")


def test_first_layout_single_file_is_read(tmp_path):
    from safetensors.torch import save_file

    save_file({"latents": torch.ones(3, 2, 4, 4), "tokens_0": torch.zeros(3, 5, 8).half(),
               "pooled_0": torch.zeros(3, 8).half()}, str(tmp_path / "val.safetensors"))
    (tmp_path / "val.captions.txt").write_text("a\nb\nc\n")
    pre = PrecomputedDataset(tmp_path, "val")
    assert len(pre) == 3 and pre[2]["latents"].shape == (2, 4, 4) and pre[2]["caption"] == "c"
