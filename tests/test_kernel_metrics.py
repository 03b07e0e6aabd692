"""KID and CMMD (`rfsweep.evaluation.statistics.mmd2`): equal to torchmetrics' KID and to the published CMMD formula,
their bootstrap influence is the derivative of the weighted statistic, older results get them from their evidence
banks (or the ranking refuses them by name), and `rank-table --rank-by` chooses what Table 1 ranks by."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.image.kid import poly_mmd

from analysis.collect import collect
from analysis.confidence import bootstrap
from analysis.evidence import RESAMPLERS
from analysis.ranking import rank_table
from rfsweep.evaluation.bank import SampleEvidence
from rfsweep.evaluation.statistics import cmmd, gaussian_kernel, kid, mmd2_influence, polynomial_kernel
from rfsweep.metrics import METRICS, ranked_names, ranking
from rfsweep.results import read_results
from tests.synthetic_evidence import synthetic

OLD_COLUMNS = ["variant", "family", "dataset", "backbone", "weights", "steps", "cfg", "clip_score", "fid", "n_samples",
               "ckpt_step", "val_loss", "seed", "run_dir", "evaluator"]


def _unit(rng, n, d, shift=0.0):
    x = rng.normal(size=(n, d)) + shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _published_cmmd(x, y, sigma=10, scale=1000):
    """google-research/cmmd distance.py `mmd`, in numpy: the biased V-statistic; also its three Gram matrices."""
    x_sqnorms, y_sqnorms = np.diag(x @ x.T), np.diag(y @ y.T)
    gamma = 1 / (2 * sigma**2)
    k_xx = np.exp(-gamma * (-2 * x @ x.T + x_sqnorms[:, None] + x_sqnorms[None, :]))
    k_xy = np.exp(-gamma * (-2 * x @ y.T + x_sqnorms[:, None] + y_sqnorms[None, :]))
    k_yy = np.exp(-gamma * (-2 * y @ y.T + y_sqnorms[:, None] + y_sqnorms[None, :]))
    return scale * (k_xx.mean() + k_yy.mean() - 2 * k_xy.mean()), k_xx, k_yy


def test_kid_is_torchmetrics_over_the_full_sets():
    rng = np.random.default_rng(0)
    x, y = _unit(rng, 300, 64, 0.2), _unit(rng, 300, 64)  # torchmetrics' unbiased MMD assumes equal set sizes
    ours = kid(x, y)
    theirs = float(poly_mmd(torch.from_numpy(y), torch.from_numpy(x)))  # degree 3, gamma 1 / d, coef 1
    assert ours > 0 and abs(ours - theirs) <= 1e-6 * abs(theirs)
    assert kid(torch.from_numpy(x).half(), torch.from_numpy(y).half()) == kid(  # fp16 tensors: their exact values
        torch.from_numpy(x).half().double().numpy(), torch.from_numpy(y).half().double().numpy())


def test_cmmd_is_the_published_formula_as_a_u_statistic():
    rng = np.random.default_rng(1)
    x, y = _unit(rng, 240, 32, 0.3), _unit(rng, 310, 32)
    v, k_xx, k_yy = _published_cmmd(x, y)
    n, m = len(x), len(y)
    # V -> U: each self term's mean over the N^2 entries becomes the mean over the N (N - 1) off the diagonal
    u = v + 1000 * ((k_xx.sum() - np.trace(k_xx)) / (n * (n - 1)) - k_xx.mean()
                    + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1)) - k_yy.mean())
    ours = cmmd(x, y)
    assert abs(ours - u) <= 1e-6 * abs(u)
    assert abs(v - ours - 1000 * ((1 - k_xx.mean()) / (n - 1) + (1 - k_yy.mean()) / (m - 1))) <= 1e-6 * abs(v)


@pytest.mark.parametrize("name, kernel, scale", [("kid", polynomial_kernel, 1.0), ("cmmd", gaussian_kernel, 1000.0)])
def test_influence_is_the_derivative_of_the_weighted_u_statistic(name, kernel, scale):
    rng = np.random.default_rng(2)
    x, y = _unit(rng, 60, 8, 0.5), _unit(rng, 80, 8)

    def gram(a, b):
        return kernel(a @ b.T, (a * a).sum(1)[:, None], (b * b).sum(1)[None], a.shape[1])

    k_xx, k_xy = gram(x, x), gram(x, y)
    np.fill_diagonal(k_xx, 0.0)

    def weighted(w):  # sum_{i != j} w_i w_j k_ij / sum_{i != j} w_i w_j - 2 sum_i w_i mean_l k(x_i, y_l) (+ const)
        return scale * (w @ k_xx @ w / (w.sum() ** 2 - (w * w).sum()) - 2 * w @ k_xy.mean(1))

    w0, eps = np.full(len(x), 1 / len(x)), 1e-5
    numeric = []
    for i in range(len(x)):
        move = -w0.copy()
        move[i] += 1  # the weight moved onto sample i, the total kept at 1
        numeric.append((weighted(w0 + eps * move) - weighted(w0 - eps * move)) / (2 * eps))
    influence = scale * mmd2_influence(x, y, kernel)
    assert np.abs(influence - np.array(numeric)).max() <= 1e-6 * np.abs(influence).max()
    assert abs(influence.sum()) < 1e-9 * np.abs(influence).max() * len(x)  # centred
    # the bootstrap's resampler: the same, on a bank's fp16 features
    e = SampleEvidence(torch.from_numpy(x).half(), torch.zeros(len(x)), torch.arange(len(x)), torch.arange(len(x)))
    ref = torch.from_numpy(y).half()
    np.testing.assert_array_equal(RESAMPLERS[name](e, (None, None, None, ref)), scale * mmd2_influence(e.features, ref,
                                                                                                       kernel))


def _write(root, df, banks, old: bool = True, with_banks: bool = True):
    """A sweep folder: each run's results.csv in the schema before KID and CMMD (`old`) and its evidence bank."""
    for run, part in df.groupby("run_dir"):
        folder = root / run.strip("/")
        folder.mkdir(parents=True)
        part = part.assign(run_dir=str(folder))
        (part[OLD_COLUMNS] if old else part).to_csv(folder / "results.csv", index=False)
        if with_banks:
            banks[run].save(folder / "evidence.safetensors")
    return root


def test_old_results_get_kid_and_cmmd_from_their_banks(tmp_path):
    df, banks = synthetic({"a": 1.0, "b": 0.5}, n=40, d=8)
    sweep = _write(tmp_path / "s", df, banks)
    one = next(sweep.rglob("results.csv"))
    assert read_results(one)[["kid", "cmmd"]].isna().all().all()  # an old file loads, its new metrics NaN
    assert collect(sweep)[0][["kid", "cmmd"]].isna().all().all()  # not ranked: not computed (seconds per setting)
    with ranking(("clip_score", "kid", "cmmd")):  # ranked: filled from the banks
        got, _ = collect(sweep)
    for r in got.itertuples():
        bank = banks["/" + str(r.run_dir)[len(str(sweep)) + 1:]]
        e = bank.settings[(r.weights, r.steps, r.cfg)]
        assert r.kid == kid(e.features, bank.reference) and r.cmmd == cmmd(e.features, bank.reference)
    assert np.isfinite(got[["kid", "cmmd"]].to_numpy()).all()
    with ranking(("clip_score", "kid")):
        assert len(rank_table(got)) == 2
        conf = bootstrap(got, b=50)  # resampled through KID's influence
    assert conf.metrics == ("clip_score", "kid") and np.isfinite(conf.values).all()


def test_without_a_bank_the_ranking_by_kid_refuses_in_one_line(tmp_path):
    df, banks = synthetic({"a": 1.0, "b": 0.5}, n=40, d=8)
    got, _ = collect(_write(tmp_path / "s", df, banks, with_banks=False))
    assert got["kid"].isna().all()
    assert len(rank_table(got)) == 2  # the paper's two metrics need no bank
    with ranking(("clip_score", "kid")), pytest.raises(ValueError) as e:
        rank_table(got)
    msg = str(e.value)
    assert "\n" not in msg and "kid" in msg and "2 runs" in msg and "/s/synthetic/a/a/seed0" in msg
    assert ranked_names() == ("clip_score", "fid")


def test_rank_by_chooses_the_metrics_of_table_1(tmp_path, capsys):
    from analysis.__main__ import main

    quality = {"v0": 0.0, "v1": 0.5, "v2": 1.0}  # CLIP and CMMD order the variants by quality
    df, banks = synthetic(quality, n=60, d=8, shift=0.5)
    fid = df.groupby("variant")["fid"].transform("mean")
    df = df.assign(fid=fid.max() + fid.min() - df["fid"])  # FID written in the reverse order: Pareto ties all
    sweep = _write(tmp_path / "s", df, banks)
    args = ["rank-table", "--results", str(sweep), "--bootstrap", "0", "--no-wandb", "--allow-incomplete"]
    tables = {}
    for by in (None, "clip_score,cmmd"):
        out = tmp_path / f"out{by}"
        assert main([*args, "--out", str(out), *(["--rank-by", by] if by else [])]) == 0
        tables[by] = pd.read_csv(out / "table1.csv").set_index("variant")["all"]
    capsys.readouterr()
    assert list(tables[None]) == [1.0, 1.0, 1.0]
    assert tables["clip_score,cmmd"].to_dict() == {"v2": 1.0, "v1": 2.0, "v0": 3.0}
    assert ranked_names() == ("clip_score", "fid")  # the option holds for its command alone
    assert main([*args, "--rank-by", "clip_score,fdd"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--rank-by" in err and "fdd" in err and all(m in err for m in METRICS)
