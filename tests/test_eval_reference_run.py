"""Reference-statistics cache, the real-data row, and `evaluate` with fake samplers."""

import numpy as np
import pytest
import torch

from rfsweep.evaluation.evaluators import EmbeddedCLIP
from rfsweep.evaluation.protocol import eval_prompts, evaluate
from rfsweep.evaluation.reference import real_reference_row, reference_stats, split_items
from rfsweep.results import SETTINGS as PAPER_SETTINGS

N = 128


@pytest.fixture(scope="module")
def clip():
    return EmbeddedCLIP.load()


@pytest.fixture(scope="module")
def ref(clip, tmp_path_factory):
    return reference_stats(clip, "shapes", "test", n=N, cache_dir=tmp_path_factory.mktemp("cache"))


def test_cache_roundtrip_and_corrupt_file_is_recomputed(clip, tmp_path, monkeypatch):
    a = reference_stats(clip, "digits", n=64, cache_dir=tmp_path)
    (path,) = (tmp_path / "reference").glob("*.npz")
    monkeypatch.setattr("rfsweep.evaluation.reference.compute_stats", lambda *a, **k: 1 / 0)
    b = reference_stats(clip, "digits", n=64, cache_dir=tmp_path)  # from the cache, no compute
    assert np.array_equal(a.sigma, b.sigma) and b.clip_score == a.clip_score and b.n == 64
    monkeypatch.undo()
    path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable"):
        c = reference_stats(clip, "digits", n=64, cache_dir=tmp_path)
    assert np.allclose(a.mu, c.mu) and not list(tmp_path.glob("reference/*.tmp"))


def test_real_row_is_a_low_floor_and_noise_is_far(clip, ref):
    real = real_reference_row(clip, ref, "shapes", n=N)
    images, _ = split_items("shapes", "test", 8, N)
    noise = evaluate(lambda w, s, c, caps, seed: torch.rand(len(caps), 3, 8, 8) * 2 - 1, clip,
                     ["a red circle"], ref, settings=[(5, 1.0)], weights=["ema"], n_samples=N, batch_size=N)[0]
    assert real["n_samples"] == N and real["fid"] < 0.2 * noise["fid"]
    assert real["clip_score"] > noise["clip_score"] + 0.1


def test_evaluate_reference_images_themselves(clip, ref, tmp_path):
    images, captions = split_items("shapes", "test", 8, N)
    calls = []

    def sample_fn(weights, steps, cfg, caps, seed):
        calls.append((weights, steps, cfg, seed, len(caps)))
        i = len([c for c in calls if c[:3] == (weights, steps, cfg)]) - 1
        return images[i * 50 : i * 50 + len(caps)]

    rows = evaluate(sample_fn, clip, captions, ref, n_samples=N, batch_size=50, grid_dir=tmp_path)
    assert [(r["weights"], r["steps"], r["cfg"]) for r in rows] == [(w, s, c) for w in ("ema", "raw")
                                                                     for s, c in PAPER_SETTINGS]
    first = [(w, s, c, seeds[0], n) for w, s, c, seeds, n in calls[:3]]
    assert first == [("ema", 50, 1.0, 0, 50), ("ema", 50, 1.0, 50, 50), ("ema", 50, 1.0, 100, 28)]  # one per sample
    assert calls[3][3] == list(range(50))  # the next setting draws each sample from the same noise seed again
    for r in rows:
        assert r["fid"] == pytest.approx(0, abs=1e-6) and r["clip_score"] == pytest.approx(ref.clip_score, abs=1e-6)
        assert r["n_samples"] == N
    assert len(list(tmp_path.glob("*.png"))) == 12


def test_prompts_cycle_and_evaluator_mismatch_is_refused(ref):
    assert eval_prompts(["a", "b"], 5) == ["a", "b", "a", "b", "a"]

    class Other:
        id = "other"

    with pytest.raises(ValueError, match="reference statistics"):
        evaluate(None, Other(), ["a"], ref)


def test_fid_grows_and_clip_falls_with_corruption(clip, ref):
    images, captions = split_items("shapes", "val", 8, N)
    g = torch.Generator().manual_seed(0)
    def corrupted(sd):
        return lambda w, s, c, caps, seed: (images + sd * torch.randn(images.shape, generator=g)).clamp(-1, 1)

    rows = [evaluate(corrupted(sd), clip, captions, ref, settings=[(1, 1.0)], weights=["ema"], n_samples=N,
                     batch_size=N)[0] for sd in (0.0, 0.3, 0.8)]
    assert rows[0]["fid"] < rows[1]["fid"] < rows[2]["fid"]
    assert rows[0]["clip_score"] > rows[1]["clip_score"] > rows[2]["clip_score"]
