"""labels.py: class order and reduction, [X/Fe] column detection and titles, missing values and placeholders."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specllm.labels import (
    CLASSES,
    STAGE1_NAMES,
    STAGE2_ELEMENTS,
    STAGE2_KEYS,
    as_float,
    clean_class,
    clean_number,
    element_columns,
    element_label,
    element_title,
    is_missing,
    label_title,
    reduce_class,
    split_element_column,
)


def test_classes_and_reduction():
    assert CLASSES == ("A", "F", "G", "K", "M") and STAGE1_NAMES == ("teff", "logg", "feh")
    cases = {"G3": "G", "dM2": "M", "sdM1": "M", "gM0": "M", "A0III": "A", "O5": None, "WD": None, "": None, None: None}
    assert {k: reduce_class(k) for k in cases} == cases
    assert clean_class(" g ") == "G" and clean_class("B") is None and clean_class(None) is None


def test_element_columns_detected_with_and_without_prefix():
    assert split_element_column("apogee_mg_fe") == ("apogee_", "mg")
    assert split_element_column("MG_FE") == ("", "mg") and split_element_column("ci_fe") == ("", "ci")
    assert split_element_column("apogee_tiii_fe") == ("apogee_", "tiii")
    for not_element in ("fe_h", "teff", "fe_fe", "alpha_fe", "apogee_fe_h", "mg_fe_flag"):
        assert split_element_column(not_element) is None, not_element
    names = ["teff", "mg_fe", "apogee_mg_fe", "apogee_tiii_fe", "flag_mg_fe", "galah_ca_fe", "apogee_alpha_m"]
    assert element_columns(names) == ["mg_fe"]
    assert element_columns(names, "apogee_") == ["apogee_mg_fe", "apogee_tiii_fe"]
    assert [element_label(e) for e in ("MG", "TIII")] == ["mg_fe", "tiii_fe"]
    assert len(STAGE2_KEYS) == len(STAGE2_ELEMENTS) == 21 and all(split_element_column(k) for k in STAGE2_KEYS)


def test_titles():
    assert (
        element_title("TIII") == "[Ti II/Fe]" and element_title("ci") == "[C I/Fe]" and element_title("MG") == "[Mg/Fe]"
    )
    assert label_title("apogee_mg_fe") == "[Mg/Fe]" and label_title("ca_fe") == "[Ca/Fe]"
    assert label_title("teff") == "Teff (K)" and label_title("feh") == "[Fe/H] (dex)" and label_title("x") == "x"
    assert label_title("apogee_tiii_fe") == "[Ti II/Fe]"


@pytest.mark.parametrize(
    "value, expected",
    [(5000, 5000.0), ("4.5", 4.5), (-9999, None), (-9999.99, None), (-9998.9, -9998.9), (None, None),
     (float("nan"), None), (float("-inf"), None), ("n/a", None), (0, 0.0)],
)  # fmt: skip
def test_clean_number(value, expected):
    assert clean_number(value) == expected


def test_missing_arrays():
    v = [1.0, np.nan, -9999.0, -9999.99, np.inf, -9998.0, None]
    assert is_missing(np.array(v[:6])).tolist() == [False, True, True, True, True, False]
    out = as_float(v)
    assert out[0] == 1.0 and out[5] == -9998.0 and all(math.isnan(x) for x in out[[1, 2, 3, 4, 6]])
    grid = np.array([[1.0, -9999.0], [np.nan, 2.0]])
    assert as_float(grid).shape == (2, 2) and grid[0, 1] == -9999.0  # a new array; the input is left alone
