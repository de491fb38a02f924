from __future__ import annotations

import json

import numpy as np
import pytest

from prefpred.calibration import Calibrator, fit_calibrator
from prefpred.metrics import accuracy, expected_calibration_error, log_loss


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _data(n: int, seed: int, sharpen: float = 3.0):
    """Labels drawn from known probabilities, and an overconfident version of those probabilities."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) * 1.5
    true_p = _softmax(logits)
    y = np.array([rng.choice(3, p=row) for row in true_p])
    return y, true_p, _softmax(logits * sharpen)


@pytest.mark.parametrize("method", ["temperature", "bias", "vector"])
def test_calibration_lowers_log_loss_of_overconfident_predictions(method):
    y, true_p, over = _data(1500, 0)
    y_test, _, over_test = _data(1500, 1)
    cal = Calibrator(method).fit(over, y)
    assert log_loss(y, cal.transform(over)) < log_loss(y, over) - 0.05
    # it generalises to new rows from the same process
    assert log_loss(y_test, cal.transform(over_test)) < log_loss(y_test, over_test) - 0.05
    assert expected_calibration_error(y_test, cal.transform(over_test)) < expected_calibration_error(y_test, over_test)
    out = cal.transform(over_test)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert cal.log_loss_after_ < cal.log_loss_before_


def test_temperature_recovers_sharpening_and_keeps_argmax():
    y, _, over = _data(3000, 2, sharpen=2.5)
    cal = fit_calibrator(over, y, "temperature")
    assert cal.temperature_ == pytest.approx(2.5, rel=0.15)
    assert accuracy(y, cal.transform(over)) == accuracy(y, over)
    np.testing.assert_array_equal(cal.transform(over).argmax(axis=1), over.argmax(axis=1))


def test_well_calibrated_predictions_stay_about_the_same():
    y, true_p, _ = _data(3000, 3)
    cal = Calibrator("temperature").fit(true_p, y)
    assert cal.temperature_ == pytest.approx(1.0, abs=0.1)


def test_soft_labels_accepted():
    _, true_p, over = _data(800, 4)
    cal = Calibrator("temperature").fit(over, true_p)  # soft targets = the true probabilities
    assert log_loss(true_p, cal.transform(over)) < log_loss(true_p, over)


def test_save_load_roundtrip(tmp_path):
    y, _, over = _data(600, 5)
    cal = Calibrator("bias").fit(over, y)
    path = cal.save(tmp_path / "cal.json")
    data = json.loads(path.read_text())
    assert data["method"] == "bias" and len(data["weights"]) == 3
    loaded = Calibrator.load(path)
    np.testing.assert_allclose(loaded.transform(over), cal.transform(over))
    assert loaded.temperature_ == pytest.approx(cal.temperature_)


def test_errors(tmp_path):
    with pytest.raises(RuntimeError, match="not fitted"):
        Calibrator().transform(np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="unknown calibration method"):
        Calibrator("isotonic").fit(np.full((2, 3), 1 / 3), [0, 1])
    with pytest.raises(FileNotFoundError):
        Calibrator.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        Calibrator.load(bad)
