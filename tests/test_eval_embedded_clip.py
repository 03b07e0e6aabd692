"""The shipped embedded CLIP: retrieval on held-out images, deterministic training, meaningful metrics."""

import pytest
import torch

from rfsweep.cli.train_clip import load_split, retrieval_accuracy, shapes_candidates, train
from rfsweep.evaluation.evaluators import EmbeddedCLIP
from rfsweep.evaluation.statistics import clip_score


@pytest.fixture(scope="module")
def clip():
    return EmbeddedCLIP.load()


@pytest.mark.parametrize("name", ["digits", "colour_digits", "shapes"])
def test_retrieval_on_held_out_images(clip, name):
    assert retrieval_accuracy(clip, name, "test") >= 0.9


def test_shapes_candidates_are_one_edit_away():
    c = shapes_candidates("a red circle left of a blue square")
    assert c[0] == "a red circle left of a blue square" and len(set(c)) == len(c) == 17
    assert "a blue square left of a red circle" in c and "a red circle above a blue square" in c
    assert len(shapes_candidates("a green triangle")) == 18


def test_features_normalised_and_resolution_agnostic(clip):
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    f = clip.encode_images(x)
    assert f.shape == (4, clip.dim) and torch.allclose(f.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(f, clip.encode_images(torch.nn.functional.avg_pool2d(x, 2)), atol=1e-5)


def test_mismatched_captions_score_lower(clip):
    for name in ("digits", "colour_digits", "shapes"):
        images, captions = load_split(name, "test")
        img = clip.encode_images(images)
        matched = clip_score(img, clip.encode_texts(captions))
        shuffled = clip_score(img, clip.encode_texts(captions[1:] + captions[:1]))
        assert matched > shuffled + 0.1


def test_training_is_deterministic():
    data = [(*load_split("digits", "train", 64), True), (*load_split("shapes", "train", 64), False)]
    a, b = (train(steps=3, seed=1, batch_size=16, data=data).model.state_dict() for _ in range(2))
    c = train(steps=3, seed=2, batch_size=16, data=data).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_canonical_captions_merge_synonyms_only():
    from rfsweep.cli.train_clip import canonical

    assert canonical("a photo of a septet") == canonical("a photo of a 7") == "a photo of a seven"
    assert canonical("a photo of a red half dozen") == "a photo of a red six"
    assert canonical("a photo of a red six") != canonical("a photo of a blue six")
    assert canonical("a red circle") == "a red circle"


def test_colour_names_the_colour_of_the_digit():
    from rfsweep.data import build_dataset
    from rfsweep.data.shapes import COLOURS

    grey, colour = build_dataset("digits", "test"), build_dataset("colour_digits", "test")
    assert len(grey) == len(colour) and len({c.split()[4] for c in colour.captions()}) == len(COLOURS)
    for i in range(20):
        name = colour[i]["caption"].split()[4]
        ink = grey[i]["image"][0] > -1  # where the grey digit has ink
        rgb = (colour[i]["image"][:, ink] + 1) / (grey[i]["image"][0, ink] + 1)  # per channel: the colour
        assert torch.allclose(rgb, torch.tensor(COLOURS[name])[:, None] * torch.ones_like(rgb), atol=1e-5)
        assert (colour[i]["image"][:, ~ink] == -1).all()
