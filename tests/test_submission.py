from __future__ import annotations

import csv
from decimal import Decimal

import numpy as np
import pytest

from prefpred.submission import read_predictions, round_rows, write_predictions, write_submission
from prefpred.types import DataError, UserError


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_submission_format_sums_and_order(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=500)
    p[0] = [1 / 3, 1 / 3, 1 / 3]
    p[1] = [0.9999999, 0.0000001, 0.0]  # rounding would push the tie column below 0
    p[2] = [0.0000004, 0.0000004, 0.9999992]
    ids = [str(1000 - i) for i in range(500)]  # not sorted: order must be kept
    path = write_submission(ids, p, tmp_path / "sub.csv")
    rows = _rows(path)
    assert rows[0] == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert [r[0] for r in rows[1:]] == ids
    for r in rows[1:]:
        vals = [Decimal(v) for v in r[1:]]
        assert all(len(v.split(".")[1]) == 6 for v in r[1:])
        assert sum(vals) == Decimal("1.000000")
        assert all(Decimal(0) <= v <= Decimal(1) for v in vals)
    # values stay within rounding distance of the input
    got = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert np.abs(got - p).max() <= 2e-6


def test_round_rows_unnormalised_input():
    q = round_rows(np.array([[2.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert q.tolist() == [[500000, 250000, 250000], [333333, 333333, 333334]]


def test_submission_refuses_overwrite_and_keeps_old_file(tmp_path):
    path = tmp_path / "sub.csv"
    write_submission(["1"], [[0.2, 0.3, 0.5]], path)
    before = path.read_text()
    with pytest.raises(FileExistsError):
        write_submission(["1"], [[0.5, 0.3, 0.2]], path)
    assert path.read_text() == before
    write_submission(["1"], [[0.5, 0.3, 0.2]], path, force=True)
    assert _rows(path)[1] == ["1", "0.500000", "0.300000", "0.200000"]


def test_submission_failure_leaves_no_file(tmp_path):
    path = tmp_path / "sub.csv"
    with pytest.raises(UserError, match="NaN"):
        write_submission(["1", "2"], [[0.2, 0.3, 0.5], [np.nan, 0.5, 0.5]], path)
    with pytest.raises(UserError, match="2 ids for 1"):
        write_submission(["1", "2"], [[0.2, 0.3, 0.5]], path)
    with pytest.raises(UserError, match="duplicate id"):
        write_submission(["1", "1"], [[0.2, 0.3, 0.5]] * 2, path)
    assert list(tmp_path.iterdir()) == []


def test_predictions_roundtrip_both_formats(tmp_path):
    rng = np.random.default_rng(1)
    p = rng.dirichlet([1, 1, 1], size=20)
    ids = [f"id{i}" for i in range(20)]
    write_predictions(ids, p, tmp_path / "oof.csv", labels=["a", "b"] * 10)
    header = (tmp_path / "oof.csv").read_text().splitlines()[0]
    assert header == "id,p_a,p_b,p_tie,label"
    got_ids, got = read_predictions(tmp_path / "oof.csv")
    assert got_ids == ids
    np.testing.assert_allclose(got, p, atol=1e-9)
    write_submission(ids, p, tmp_path / "sub.csv")
    got_ids, got = read_predictions(tmp_path / "sub.csv")
    assert got_ids == ids
    np.testing.assert_allclose(got, p, atol=1e-6)


def test_read_predictions_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,x,y\n1,2,3\n")
    with pytest.raises(DataError, match="expected columns"):
        read_predictions(bad)
    bad.write_text("id,p_a,p_b,p_tie\n1,0.2,0.3,0.5\n2,0.1,oops,0.2\n")
    with pytest.raises(DataError, match="row 2"):
        read_predictions(bad)
    with pytest.raises(FileNotFoundError):
        read_predictions(tmp_path / "missing.csv")
    leading = tmp_path / "zeros.csv"
    leading.write_text("id,p_a,p_b,p_tie\n007,0.2,0.3,0.5\n")
    assert read_predictions(leading)[0] == ["007"]


@pytest.mark.parametrize(("body", "match"), [
    ("", "no prediction rows"),  # header only
    ("1,0.2,0.3,0.5\n2,0.1,0.2,0.7\n1,0.3,0.3,0.4\n", r"row 3.*duplicate id '1'.*row 1"),
    ("1,0.2,0.3,0.5\n2,1.5,-0.7,0.2\n", r"row 2.*'p_a'.*not a probability"),
    ("1,0.2,0.3,0.5\n2,inf,0.3,0.2\n", r"row 2.*'p_a'.*not a probability"),
    ("1,0.2,0.3,0.5\n2,0.5,0.5,0.5\n", r"row 2.*sum to 1.5"),
    ("1,0,0,0\n", r"row 1.*sum to 0"),
])
def test_read_predictions_refuses_what_cannot_be_scored(tmp_path, body, match):
    path = tmp_path / "pred.csv"
    path.write_text("id,p_a,p_b,p_tie\n" + body)
    with pytest.raises(DataError, match=match):
        read_predictions(path)


def test_read_predictions_renormalises_rounded_rows(tmp_path):
    """Rows rounded to a few decimals (sums a little off 1) are accepted and scaled to sum to 1 exactly."""
    path = tmp_path / "pred.csv"
    path.write_text("id,winner_model_a,winner_model_b,winner_tie\n1,0.333,0.333,0.333\n2,0.2,0.3,0.501\n")
    ids, proba = read_predictions(path)
    assert ids == ["1", "2"]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(proba[1], np.array([0.2, 0.3, 0.501]) / 1.001)
