"""metrics.py: the one definition of n, mu, sigma (ddof 0), RMSE, median, robust sigma and within-1-sigma."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specllm.metrics import FIELDS, OVERALL, far_off, per_class, residual_stats, stat_of


def test_known_values_and_missing_rows():
    s = residual_stats(np.array([1.0, 2.0, 3.0, 7.0]), np.array([0.0, 0.0, np.nan, 1.0]))
    # residuals 1, 2, 6: the row without a label is left out, never counted as zero
    assert s.n == 3 and s.mu == pytest.approx(3.0)
    assert s.sigma == pytest.approx(math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 3))  # ddof 0
    assert s.rmse == pytest.approx(math.sqrt((1 + 4 + 36) / 3)) and s.rmse**2 == pytest.approx(s.mu**2 + s.sigma**2)
    assert s.median == 2.0 and s.sigma_mad == pytest.approx(1.4826 * 1.0)
    assert math.isnan(s.within_1sigma)  # no errors given


def test_empty_and_single():
    s = residual_stats(np.array([np.nan]), np.array([1.0]))
    assert s.n == 0 and all(math.isnan(getattr(s, f)) for f in FIELDS[1:])
    assert s.as_dict() == {"n": 0, **dict.fromkeys(FIELDS[1:])}
    one = stat_of([5.0])
    assert (one.n, one.mu, one.sigma, one.sigma_mad) == (1, 5.0, 0.0, 0.0)


def test_robust_sigma_ignores_an_outlier():
    rng = np.random.default_rng(0)
    r = rng.normal(0.0, 1.0, 2000)
    r[0] = 1e4
    s = stat_of(r)
    assert s.sigma > 100 and s.sigma_mad == pytest.approx(1.0, abs=0.08)


def test_within_one_sigma_uses_each_rows_error():
    pred = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    true = np.zeros(5)
    err = np.array([2.0, 1.0, 3.0, np.nan, 10.0])  # rows 0, 2, 4 within; row 3 has no error
    assert residual_stats(pred, true, err).within_1sigma == pytest.approx(3 / 4)


def test_per_class_groups_and_overall():
    pred = np.array([1.0, 3.0, 10.0, 20.0, 5.0])
    true = np.zeros(5)
    classes = np.array(["G", "G", "K", None, "B"], dtype=object)
    out = per_class(pred, true, classes, err=np.full(5, 4.0))
    assert list(out) == ["A", "F", "G", "K", "M", OVERALL] and OVERALL == "all"
    assert out["A"].n == 0 and math.isnan(out["A"].mu)
    assert (out["G"].n, out["G"].mu, out["G"].sigma) == (2, 2.0, 1.0) and out["G"].within_1sigma == 1.0
    assert out[OVERALL].n == 5 and out[OVERALL].mu == pytest.approx(39 / 5)  # class-less and B rows count here
    custom = per_class(pred, true, classes, groups=("B", "G"))
    assert list(custom) == ["B", "G", OVERALL] and custom["B"].mu == 5.0


def test_binned_groups_rows_by_the_reference_value():
    from specllm.metrics import binned

    true = np.array([5100.0, 5900.0, 6000.0, 9500.0, np.nan, 9999.0])
    pred = true + np.array([10.0, 30.0, -50.0, -400.0, 0.0, np.nan])
    out = binned(pred, true, 1000.0)
    assert list(out) == ["5000", "6000", "9000"]
    assert out["5000"].n == 2 and out["5000"].mu == pytest.approx(20.0)
    assert out["9000"].n == 1 and out["9000"].mu == pytest.approx(-400.0)  # the NaN prediction is left out
    assert list(binned(pred, true, 1000.0, min_n=2)) == ["5000"]


def test_far_off_uses_each_labels_limit_and_skips_missing():
    names = ["teff", "logg", "feh", "mg_fe"]  # mg_fe: no limit, never far off
    truth = np.array([[6000, 4.0, 0.0, 0.0]] * 5)
    pred = np.array(
        [
            [6999, 4.99, 0.74, 9.0],  # each just inside its limit
            [7001, 4.0, 0.0, 0.0],  # Teff > 1,000 K off
            [6000, 2.9, 0.0, 0.0],  # log g > 1 off
            [6000, 4.0, -0.76, 0.0],  # [Fe/H] > 0.75 off
            [np.nan, 4.0, 0.0, 0.0],  # a missing prediction is not far off
        ]
    )
    assert far_off(pred, truth, names).tolist() == [False, True, True, True, False]
