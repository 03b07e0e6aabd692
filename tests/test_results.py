"""The results schema: validation, atomic write, corrupt-file errors, completeness of a run."""

import math

import numpy as np
import pandas as pd
import pytest

from rfsweep.results import (
    REAL,
    REAL_VARIANT,
    SETTINGS,
    WEIGHTS,
    ResultsError,
    columns,
    read_results,
    results_complete,
    validate_rows,
    write_results,
)

VARIANTS = {
    "rf": ["rf", "rf/lognorm(0.00, 1.00)", "rf/mode(1.29)"],
    "edm": ["edm(-1.20, 1.20)", "edm/rf"],
    "eps": ["eps/linear", "eps/cos"],
    "v": ["v/linear", "v/cos"],
}
DATASETS = ("imagenet", "cc12m")


def row(variant="rf", family="rf", dataset="imagenet", weights="ema", steps=50, cfg=5.0, clip=0.25, fid=50.0,
        seed=0, **kw):
    r = dict(variant=variant, family=family, dataset=dataset, backbone="dit-s", weights=weights, steps=steps,
             cfg=cfg, clip_score=clip, fid=fid, n_samples=1000, ckpt_step=100, val_loss=0.5, seed=seed,
             run_dir=f"runs/{variant}-{dataset}")
    r.update(kw)
    return r


def grid(seed=0, real=True):
    """Rows shaped like the real study: 9 variants of 4 families x 2 datasets x 2 weights x 6 settings,
    plus one reference row per dataset."""
    rng = np.random.default_rng(seed)
    rows = []
    for fam, variants in VARIANTS.items():
        for v in variants:
            for ds in DATASETS:
                for w in WEIGHTS:
                    for steps, cfg in SETTINGS:
                        rows.append(row(v, fam, ds, w, steps, cfg, clip=0.2 + 0.05 * rng.random(),
                                        fid=40 + 60 * rng.random() + 100 / steps))
    if real:
        rows += [row(REAL_VARIANT, REAL, ds, REAL, 0, 0.0, clip=0.26, fid=5.0, run_dir="") for ds in DATASETS]
    return pd.DataFrame(rows)


def test_roundtrip_keeps_schema_order_and_values(tmp_path):
    df = grid()
    shuffled = df[list(reversed(df.columns))]
    write_results(tmp_path / "results.csv", shuffled)
    back = read_results(tmp_path / "results.csv")
    assert list(back.columns) == list(columns())
    pd.testing.assert_frame_equal(back[["steps", "clip_score"]], df[["steps", "clip_score"]])
    assert set(back["weights"]) == {"ema", "raw", "real"}


def test_write_accepts_list_of_dicts(tmp_path):
    write_results(tmp_path / "r.csv", [row(), row(weights="raw")])
    assert len(read_results(tmp_path / "r.csv")) == 2


@pytest.mark.parametrize("change, words", [
    ({"weights": "best"}, ["weights", "ema", "raw", "real"]),
    ({"family": "flow"}, ["family", "rf"]),
    ({"clip": math.inf}, ["clip_score", "finite"]),
    ({"fid": math.nan}, ["fid", "finite"]),
    ({"n_samples": -1}, ["n_samples", ">= 0"]),
    ({"steps": "many"}, ["steps", "numeric"]),
])
def test_validate_names_column_and_allowed(change, words):
    with pytest.raises(ResultsError) as e:
        validate_rows(pd.DataFrame([row(**change)]))
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_validate_missing_column():
    with pytest.raises(ResultsError, match="missing columns.*'fid'"):
        validate_rows(pd.DataFrame([row()]).drop(columns="fid"))


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    write_results(path, [row()])
    before = path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]

    def torn(self, f, **kw):
        f.write("variant,fam")  # half a header, then the process dies
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(pd.DataFrame, "to_csv", torn)
    with pytest.raises(RuntimeError):
        write_results(path, [row(), row(weights="raw")])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) - 7],  # torn last line
    lambda b: b[:40],  # torn header
    lambda b: b"\x89PNG\r\n\x1a\n\x00\xff\xfe garbage\n",
    lambda b: b"",
    lambda b: b.replace(b",1000,", b",ten,", 1),  # non-numeric n_samples
])
def test_read_corrupt_file_names_path(tmp_path, damage):
    path = tmp_path / "results.csv"
    write_results(path, grid().head(5))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ResultsError) as e:
        read_results(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_read_missing_file(tmp_path):
    with pytest.raises(ResultsError, match="no such results file"):
        read_results(tmp_path / "nope.csv")


def test_results_complete(tmp_path):
    path = tmp_path / "results.csv"
    assert not results_complete(path)
    full = grid(real=False).query("variant == 'rf' and dataset == 'imagenet'")
    write_results(path, full)
    assert results_complete(path)
    assert results_complete(path, [("ema", 50, 1.0)])
    write_results(path, full[~((full["weights"] == "raw") & (full["steps"] == 5))])
    assert not results_complete(path)
    assert results_complete(path, [("ema", 5, 5.0), ("raw", 50, 2.5)])
    assert not results_complete(path, [(5, 5.0)])  # a (steps, cfg) pair means both weights
    path.write_text("variant,family\nrf")
    assert not results_complete(path)


def test_the_evaluator_column_is_optional_kept_and_checked(tmp_path):
    from rfsweep.results import EVALUATOR, UNRECORDED, check_one_evaluator, evaluators

    old = grid()
    write_results(tmp_path / "old.csv", old)  # written before results named their evaluator
    assert EVALUATOR not in read_results(tmp_path / "old.csv").columns
    assert evaluators(read_results(tmp_path / "old.csv")) == [UNRECORDED]
    new = grid().assign(evaluator="embedded_clip:abc")
    write_results(tmp_path / "new.csv", new)
    back = read_results(tmp_path / "new.csv")
    assert set(back[EVALUATOR]) == {"embedded_clip:abc"}
    assert results_complete(tmp_path / "new.csv", evaluator="embedded_clip:abc")
    assert not results_complete(tmp_path / "new.csv", evaluator="embedded_clip:def")
    assert not results_complete(tmp_path / "old.csv", evaluator="embedded_clip:abc")  # unknown provenance: redo
    check_one_evaluator(back, "x")
    mixed = pd.concat([read_results(tmp_path / "old.csv"), back], ignore_index=True)
    with pytest.raises(ResultsError, match=r"x: results of 2 evaluators \(embedded_clip:abc \(\d+ rows\), unrecorded"):
        check_one_evaluator(mixed, "x")


def test_the_fit_error_column_is_optional_kept_and_checked_on_post_hoc_rows_only(tmp_path):
    """fit_error: absent in older files, kept through a write and read, a finite number >= 0 on phema<sigma_rel> rows
    and empty on the others."""
    from rfsweep.results import FIT_ERROR

    rows = pd.DataFrame([row(weights="ema"), row(weights="phema0.08", **{FIT_ERROR: 0.011}),
                         row(weights="phema0.2", **{FIT_ERROR: math.nan})])
    write_results(tmp_path / "r.csv", rows)
    back = read_results(tmp_path / "r.csv")
    assert back[FIT_ERROR].iloc[1] == 0.011 and back[FIT_ERROR].isna().tolist() == [True, False, True]
    assert FIT_ERROR not in validate_rows(rows.drop(columns=FIT_ERROR)).columns
    for weights, value in (("phema0.08", -0.1), ("phema0.08", math.inf), ("ema", 0.01)):
        bad = pd.DataFrame([row(weights=weights, **{FIT_ERROR: value})])
        with pytest.raises(ResultsError, match=f"column 'fit_error' has .* for weights '{weights}'"):
            validate_rows(bad)
