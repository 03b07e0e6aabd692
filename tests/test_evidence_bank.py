"""The evidence bank (`<run>/evidence.safetensors`): every sample's features, CLIP similarity, prompt index and noise
seed per setting, the reference features, keyed by the evaluator; written with the results, resumable like them;
a run evaluated before the bank existed is evaluated again, never trained again."""

from __future__ import annotations

import pytest
import torch

from rfsweep.errors import ResultsError
from rfsweep.evaluation.bank import BANK_FILE, EvidenceBank, bank_complete, bank_size
from rfsweep.evaluation.protocol import EvaluationStopped, noise_seed
from rfsweep.evaluation.reference import reference_stats
from rfsweep.evaluation.statistics import feature_stats, frechet_distance
from rfsweep.results import read_results
from rfsweep.run.eval_stage import configured_evaluator, evaluate_run
from rfsweep.runfolder import read_status
from tests.helpers import run_cli, tiny
from tests.test_eval_stages import EVAL, _trained


def test_the_bank_holds_what_the_results_were_computed_from(tmp_path):
    cfg, module, info, settings = _trained(tmp_path)
    run = tmp_path / "run"
    evaluator = configured_evaluator(cfg)
    rows = evaluate_run(cfg, module, run, info, settings, evaluator)
    bank = EvidenceBank.load(run / BANK_FILE)
    assert bank.evaluator_id == evaluator.id and bank.ckpt_step == info["step"] and len(bank.settings) == 4
    ref = reference_stats(evaluator, cfg.data.name, "test", cfg.data.resolution, cfg.eval.n_samples, cfg.data.seed,
                          cache_dir=cfg.paths.cache)
    assert bank.reference.dtype == torch.float16 and bank.reference.shape == (16, evaluator.dim)
    for r in (r for r in rows if r["weights"] != "real"):
        e = bank.settings[(r["weights"], r["steps"], round(r["cfg"], 6))]
        assert e.features.dtype == torch.float16 and e.features.shape == (16, evaluator.dim)
        assert e.noise_seed.tolist() == [noise_seed(cfg.eval.seed, i) for i in range(16)]
        assert e.prompt.tolist() == list(range(16))  # 16 held-out captions, one per sample
        assert float(e.similarity.double().mean()) == pytest.approx(r["clip_score"], abs=1e-6)
        fid = frechet_distance(*feature_stats(e.features.float()), ref.mu, ref.sigma)
        assert fid == pytest.approx(r["fid"], rel=2e-2)  # from the fp16 features the bank keeps
    real = next(r for r in rows if r["weights"] == "real")  # the held-out real images, each with its own caption
    assert bank.real.features.shape == (16, evaluator.dim) and bank.real.prompt.tolist() == list(range(16))
    assert bank.real.noise_seed.tolist() == [-1] * 16
    assert float(bank.real.similarity.double().mean()) == pytest.approx(real["clip_score"], abs=1e-6)
    assert frechet_distance(*feature_stats(bank.real.features.float()), ref.mu, ref.sigma) == pytest.approx(
        real["fid"], rel=2e-2)
    size = (run / BANK_FILE).stat().st_size  # what `bank_size` says, plus the header (names, offsets, metadata)
    assert bank_size(4, 16, evaluator.dim, 16, 16) < size <= bank_size(4, 16, evaluator.dim, 16, 16) + 4096


def test_the_batch_size_does_not_change_what_is_drawn(tmp_path):
    cfg, module, info, settings = _trained(tmp_path)
    banks = []
    for batch in (16, 5):
        cfg.eval.batch_size = batch
        evaluate_run(cfg, module, tmp_path / f"b{batch}", info, settings[:1], configured_evaluator(cfg))
        banks.append(EvidenceBank.load(tmp_path / f"b{batch}" / BANK_FILE))
    for key, e in banks[0].settings.items():
        torch.testing.assert_close(e.features.float(), banks[1].settings[key].features.float(), atol=2e-3, rtol=0)


def test_a_stopped_evaluation_keeps_the_evidence_of_finished_settings(tmp_path):
    cfg, module, info, settings = _trained(tmp_path)
    run = tmp_path / "run"
    asked = []
    with pytest.raises(EvaluationStopped):
        evaluate_run(cfg, module, run, info, settings, configured_evaluator(cfg),
                     stop=lambda: len(asked.append(1) or asked) > 1)
    kept = EvidenceBank.load(run / BANK_FILE)
    assert list(kept.settings) == [("ema", 2, 1.0)]
    evaluate_run(cfg, module, run, info, settings, configured_evaluator(cfg))
    done = EvidenceBank.load(run / BANK_FILE)
    assert len(done.settings) == 4
    assert torch.equal(done.settings[("ema", 2, 1.0)].features, kept.settings[("ema", 2, 1.0)].features)


def test_a_damaged_bank_is_one_line_and_evaluated_again(tmp_path, capsys):
    cfg, module, info, settings = _trained(tmp_path)
    run = tmp_path / "run"
    evaluate_run(cfg, module, run, info, settings[:1], configured_evaluator(cfg))
    (run / BANK_FILE).write_bytes(b"\x00" * 40)
    with pytest.raises(ResultsError, match=r"not a readable evidence bank .*stage=evaluate\)$"):
        EvidenceBank.load(run / BANK_FILE)
    assert not bank_complete(run / BANK_FILE, [("ema", 2, 1.0)], configured_evaluator(cfg).id)
    evaluate_run(cfg, module, run, info, settings[:1], configured_evaluator(cfg))
    assert "not a readable evidence bank" in capsys.readouterr().err
    assert len(EvidenceBank.load(run / BANK_FILE).settings) == 2  # both weights of the setting, again
    assert len(read_results(run / "results.csv")) == 3


@pytest.mark.long
def test_a_run_evaluated_before_the_bank_is_evaluated_again_not_trained(tmp_path):
    args = [*tiny(tmp_path, 4), *EVAL]
    assert run_cli(args).returncode == 0
    run = next((tmp_path / "runs").rglob("status.json")).parent
    (run / BANK_FILE).unlink()  # as a run evaluated before the evidence bank existed
    ckpts = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    r = run_cli(args)
    assert r.returncode == 0 and "skip:" not in r.stdout, r.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts and read_status(run)["state"] == "done"
    assert len(EvidenceBank.load(run / BANK_FILE).settings) == 4
    assert "skip:" in run_cli(args).stdout  # complete now
