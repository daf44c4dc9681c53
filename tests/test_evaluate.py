"""Metrics, the paper's table layouts, writers and plots."""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest

from specllm.evaluate import (
    GROUPS,
    MISSING_CELL,
    class_accuracy,
    compute_stats,
    element_table,
    markdown_table,
    per_class_table,
    residual_plot,
    rmse_table,
    scaling_plot,
    stats_json,
)
from specllm.files import csv_text, write_csv

PNG = b"\x89PNG\r\n\x1a\n"


def test_missing_labels_are_left_out_not_zero_filled():
    true = np.array([[5000.0], [6000.0], [np.nan]])
    pred = np.array([[5100.0], [5900.0], [1e9]])
    classes = np.array(["G", "F", "G"], dtype=object)
    stats = {(s.label, s.group): s for s in compute_stats("m", true, pred, classes, ["teff"])}
    assert stats[("teff", "all")].n == 2
    assert stats[("teff", "all")].mu == pytest.approx(0.0)
    assert stats[("teff", "all")].sigma == pytest.approx(100.0)
    assert stats[("teff", "G")].n == 1 and stats[("teff", "G")].mu == pytest.approx(100.0)
    assert stats[("teff", "A")].n == 0


def _stats():
    rng = np.random.default_rng(0)
    classes = np.array(list("AFGKM") * 8 + [None, None], dtype=object)
    n = len(classes)
    true = np.column_stack([rng.uniform(4000, 9000, n), rng.uniform(1, 5, n), rng.uniform(-2, 0.5, n)])
    out = []
    for model, noise in (("lightgbm", 1.0), ("gru", 0.5)):
        pred = true + noise * rng.normal(0, [100, 0.2, 0.1], true.shape)
        out += compute_stats(model, true, pred, classes, ["teff", "logg", "feh"])
    return out, classes, true


def test_per_class_table_has_the_paper_layout():
    stats, _, _ = _stats()
    header, rows = per_class_table(stats, "teff")
    assert header == ["model", "A", "F", "G", "K", "M", "all"]
    assert [r[0] for r in rows] == ["lightgbm", "gru"]
    cell = re.compile(r"^-?\d+\.\d ± \d+\.\d$")  # Teff: one decimal
    assert all(cell.match(c) for r in rows for c in r[1:])
    _, rows = per_class_table(stats, "feh")
    assert all(re.match(r"^-?\d+\.\d{3} ± \d+\.\d{3}$", c) for r in rows for c in r[1:])
    # overall counts the two class-less spectra too
    overall = [s for s in stats if s.model == "gru" and s.label == "teff" and s.group == "all"][0]
    assert overall.n == 42


def test_empty_class_shows_a_dash():
    true = np.array([[1.0], [2.0]])
    stats = compute_stats("m", true, true + 0.5, np.array(["G", "G"], dtype=object), ["logg"])
    header, rows = per_class_table(stats, "logg")
    assert rows[0][header.index("A")] == MISSING_CELL and rows[0][header.index("G")] == "0.500 ± 0.000"


def test_element_and_rmse_tables():
    stats, _, _ = _stats()
    header, rows = element_table(stats)
    assert header == ["model", "Teff (K)", "log g (dex)", "[Fe/H] (dex)"] and len(rows) == 2
    header, rows = rmse_table(stats)
    assert header == ["label", "model", *GROUPS]
    assert [r[:2] for r in rows[:2]] == [["Teff (K)", "lightgbm"], ["Teff (K)", "gru"]] and len(rows) == 6
    lgbm, gru = float(rows[0][-1]), float(rows[1][-1])
    assert gru < lgbm  # gru was given half the noise


def test_writers(tmp_path):
    stats, _, _ = _stats()
    table = per_class_table(stats, "logg")
    md = markdown_table(table)
    assert (
        md.splitlines()[0] == "| model | A | F | G | K | M | all |"
        and md.splitlines()[1] == "|---|---|---|---|---|---|---|"
    )
    write_csv(tmp_path / "t.csv", *table)
    assert list(csv.reader(io.StringIO((tmp_path / "t.csv").read_text())))[1:] == table[1]
    assert csv_text(["a"], [[1]]) == "a\n1\n"
    js = stats_json(compute_stats("m", np.array([[np.nan]]), np.array([[1.0]]), np.array(["A"], dtype=object), ["feh"]))
    assert js[0]["mu"] is None and js[0]["n"] == 0


def test_class_accuracy_ignores_unknown_truth():
    n, acc = class_accuracy(np.array(["A", "F", None], dtype=object), np.array(["A", "G", "F"], dtype=object))
    assert n == 2 and acc == 0.5


def test_plots_are_written(tmp_path):
    stats, classes, true = _stats()
    residual_plot(tmp_path / "r.png", "teff", true[:, 0], classes, {"a": true[:, 0] + 1, "b": true[:, 0] - 1})
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG
    points = [
        {"model": m, "n_train": n, "label": lab, "sigma": 1.0 / n}
        for m in "ab"
        for n in (10, 20)
        for lab in ("teff", "feh")
    ]
    scaling_plot(tmp_path / "s.png", points, ["teff", "feh"])
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG
