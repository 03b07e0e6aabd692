"""OpenCLIPEvaluator at a tiny random configuration; offline failure is immediate and clear."""

import json
import time

import open_clip
import pytest
import torch
from open_clip.pretrained import _PRETRAINED, _pcfg
from safetensors.torch import save_file

from rfsweep.evaluation.evaluators import EvaluatorUnavailable, OpenCLIPEvaluator

TINY = "rfsweep-tiny-test"
CFG = {"embed_dim": 16,
       "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
       "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_model_name(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / f"{TINY}.json"
    path.write_text(json.dumps(CFG))
    open_clip.add_model_config(path)
    return TINY


def test_tiny_openclip_features_are_normalised(tiny_model_name):
    ev = OpenCLIPEvaluator(tiny_model_name, pretrained=None)
    assert ev.size == (32, 32) and ev.dim == 16 and ev.id == f"open_clip:{TINY}:random"
    img = ev.encode_images(torch.rand(3, 3, 8, 8) * 2 - 1)
    txt = ev.encode_texts(["a photo of a seven", "a red circle", "x"])
    assert img.shape == txt.shape == (3, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    # preprocessing: [-1, 1] -> [0, 1] -> bicubic to 32x32 -> (x - mean) / std
    x = ev.preprocess(torch.full((1, 3, 8, 8), 1.0))
    assert torch.allclose(x, (1 - ev.mean) / ev.std * torch.ones_like(x))


def test_missing_weights_fail_fast_with_a_clear_message(tmp_path):
    t0 = time.time()
    with pytest.raises(EvaluatorUnavailable, match=r"ViT-L-14/openai.*eval.evaluator=embedded"):
        OpenCLIPEvaluator("ViT-L-14", "openai", cache_dir=str(tmp_path))
    assert time.time() - t0 < 2
    with pytest.raises(EvaluatorUnavailable, match="neither"):
        OpenCLIPEvaluator("ViT-L-14", "no-such-tag")


def test_weights_found_in_the_hf_cache_are_loaded(tiny_model_name, tmp_path, monkeypatch):
    source = open_clip.create_model(tiny_model_name)
    snap = tmp_path / "models--rfsweep--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (tmp_path / "models--rfsweep--tiny" / "refs").mkdir()
    (tmp_path / "models--rfsweep--tiny" / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(snap / "open_clip_model.safetensors"))
    monkeypatch.setitem(_PRETRAINED, TINY, {"tiny": _pcfg(hf_hub="rfsweep/tiny/")})
    ev = OpenCLIPEvaluator(tiny_model_name, "tiny", cache_dir=str(tmp_path))
    assert ev.id == f"open_clip:{TINY}:tiny"
    from rfsweep.evaluation.evaluators import evaluator_id  # the id a run's config gives, without loading a model

    assert evaluator_id("openclip", model_name=tiny_model_name, pretrained="tiny", cache_dir=str(tmp_path)) == ev.id
    captions = ["a green triangle"]
    expected = source.eval().encode_text(open_clip.get_tokenizer(TINY)(captions), normalize=True)
    assert torch.allclose(ev.encode_texts(captions), expected, atol=1e-6)
