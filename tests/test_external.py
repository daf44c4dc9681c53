"""compare-external: id and sky joins, survey quality cuts, Table 7/8 layouts, plots, partial coverage, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import get_args

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from specllm.cli import app
from specllm.config import ExternalConfig, InferConfig, SurveyName
from specllm.errors import SpecllmError
from specllm.external import compare_external
from specllm.external.reference import read_reference
from specllm.external.stats import stats
from specllm.io.surveys import CATALOGUES, SURVEYS, PlainTable, Survey, register
from specllm.labels import element_title

try:  # the table writers live in test_surveys.py (tests/ is on sys.path under pytest's default import mode)
    from test_surveys import allstar_table
except ImportError:
    from tests.test_surveys import allstar_table

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(path: Path, rows: list[dict]) -> str:
    table = pa.Table.from_pylist(rows)
    if path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return str(path)


def _prediction(i: int, cls: str, teff: float, logg: float, feh: float, **extra) -> dict:
    row = {
        "file": f"spectra/spec-{i:04d}.fits.gz",
        "spec_id": str(1000 + i),
        "obsid": 1000 + i,
        "ra": 10.0 + 0.01 * i,
        "dec": 20.0,
        "class": cls,
        "teff": teff,
        "logg": logg,
        "feh": feh,
        "teff_err": 50.0,
        "logg_err": 0.1,
        "feh_err": 0.05,
        "coverage": 0.97,
        "status": "ok",
        "partial": False,
    }
    row.update(extra)
    return row


def _pair(tmp_path: Path, n: int = 40, fmt: str = ".parquet"):
    """Predictions with known offsets: class G +100 K / +0.1 / -0.05, class K -50 K / 0 / +0.02 (alternating)."""
    preds, refs = [], []
    for i in range(n):
        cls = "G" if i % 2 == 0 else "K"
        t, g, f = 5000.0 + 10 * i, 4.0 + 0.01 * i, -0.5 + 0.02 * i
        dt, dg, df = (100.0, 0.1, -0.05) if cls == "G" else (-50.0, 0.0, 0.02)
        preds.append(_prediction(i, cls, t + dt, g + dg, f + df))
        refs.append({"obsid": 1000 + i, "ra": 10.0 + 0.01 * i, "dec": 20.0, "teff": t, "logg": g, "feh": f})
    return _write(tmp_path / f"pred{fmt}", preds), _write(tmp_path / "cat.csv", refs)


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_id_join_and_table7_layout(tmp_path):
    pred, cat = _pair(tmp_path)
    result = compare_external(pred, cat, str(tmp_path / "out"), ExternalConfig(survey="lamost"))
    assert result.counts["matched"] == 40 and result.counts["matched_by_id"] == 40
    rows = _rows(tmp_path / "out" / "table7.csv")
    assert list(rows[0]) == ["subset", "class", "label", "n", "mu", "sigma", "median", "sigma_mad"]
    assert {(r["class"], r["label"]) for r in rows} == {
        (c, label) for c in "GK" for label in ("teff", "logg", "feh")
    } | {("all", label) for label in ("teff", "logg", "feh")}
    by = {(r["class"], r["label"]): r for r in rows}
    assert float(by["G", "teff"]["mu"]) == pytest.approx(100.0) and float(by["G", "teff"]["sigma"]) == pytest.approx(
        0, abs=1e-6
    )
    assert float(by["K", "feh"]["mu"]) == pytest.approx(0.02)
    assert float(by["all", "teff"]["mu"]) == pytest.approx(25.0) and int(by["all", "teff"]["n"]) == 40
    assert {r["subset"] for r in rows} == {"all"}  # no partial rows: one subset


def test_join_by_file_name_and_csv_predictions(tmp_path):
    preds = [_prediction(i, "F", 6000.0 + i, 4.2, 0.0, obsid=None, spec_id=f"spec-{i:04d}") for i in range(5)]
    refs = [{"filename": f"spec-{i:04d}.fits", "teff": 6000.0, "logg": 4.2, "feh": 0.0} for i in range(5)]
    pred = _write(tmp_path / "pred.csv", preds)
    cat = _write(tmp_path / "dr1.csv", refs)
    result = compare_external(pred, cat, str(tmp_path / "out"), ExternalConfig(survey="lamost", match="id"))
    assert result.counts["matched_by_id"] == 5
    overall = next(r for r in result.table7 if r["class"] == "all" and r["label"] == "teff")
    assert overall["mu"] == pytest.approx(2.0)


def test_sky_join_respects_the_radius(tmp_path):
    preds = [_prediction(i, "G", 5800.0, 4.4, 0.0, obsid=None, spec_id=f"x{i}") for i in range(3)]
    arcsec = 1.0 / 3600.0
    refs = [
        {
            "ra": preds[0]["ra"] + 1.0 * arcsec / np.cos(np.radians(20.0)),
            "dec": 20.0,
            "teff": 5700.0,
            "logg": 4.4,
            "feh": 0.0,
        },
        {"ra": preds[1]["ra"], "dec": 20.0 + 5.0 * arcsec, "teff": 5700.0, "logg": 4.4, "feh": 0.0},
        {"ra": 200.0, "dec": -30.0, "teff": 5700.0, "logg": 4.4, "feh": 0.0},
    ]
    pred, cat = _write(tmp_path / "p.parquet", preds), _write(tmp_path / "c.csv", refs)
    result = compare_external(pred, cat, str(tmp_path / "a"), ExternalConfig(match="sky"))
    assert result.counts["matched_by_sky"] == 1  # 1" matches, 5" does not at the default 3"
    matched = pq.read_table(tmp_path / "a" / "matched.parquet").to_pydict()
    assert matched["spec_id"] == ["x0"] and matched["sep_arcsec"][0] == pytest.approx(1.0, abs=0.01)
    wide = compare_external(pred, cat, str(tmp_path / "b"), ExternalConfig(match="sky", radius_arcsec=6.0))
    assert wide.counts["matched_by_sky"] == 2


def test_auto_join_uses_ids_then_the_sky(tmp_path):
    preds = [_prediction(0, "G", 5800.0, 4.4, 0.0), _prediction(1, "G", 5800.0, 4.4, 0.0, obsid=None, spec_id="nope")]
    refs = [
        {"obsid": 1000, "ra": 0.0, "dec": 0.0, "teff": 5700.0, "logg": 4.4, "feh": 0.0},
        {"obsid": 9, "ra": preds[1]["ra"], "dec": 20.0, "teff": 5750.0, "logg": 4.4, "feh": 0.0},
    ]
    result = compare_external(
        _write(tmp_path / "p.parquet", preds), _write(tmp_path / "c.csv", refs), str(tmp_path / "o")
    )
    assert (result.counts["matched_by_id"], result.counts["matched_by_sky"]) == (1, 1)


def test_no_match_is_one_clear_error(tmp_path):
    pred = _write(tmp_path / "p.parquet", [_prediction(0, "G", 5800.0, 4.4, 0.0)])
    cat = _write(tmp_path / "c.csv", [{"obsid": 5, "teff": 5000.0, "logg": 4.0, "feh": 0.0}])
    with pytest.raises(SpecllmError, match="no prediction matched"):
        compare_external(pred, cat, str(tmp_path / "o"), ExternalConfig(match="id"))


def _galah(tmp_path: Path):
    """GALAH DR4 allstar layout: sobject_id, ra, dec, teff, logg, fe_h, mg_fe, flag_mg_fe, flag_sp, snr_px_ccd3."""
    preds, refs = [], []
    for i in range(12):
        sid = f"s{i}" if i != 11 else "J11"  # the last one joins on the second id column, tmass_id
        preds.append(_prediction(i, "G", 5800.0 + 40, 4.4 + 0.02, -0.01, spec_id=sid, obsid=None, mg_fe=0.12))
        refs.append(
            {
                "sobject_id": f"s{i}",
                "tmass_id": f"J{i}",
                "ra": 0.0,
                "dec": 0.0,
                "teff": 5800.0,
                "logg": 4.4,
                "fe_h": 0.0 if i != 5 else -9999.99,  # a placeholder: no [Fe/H] for that star
                "flag_fe_h": 0,
                "mg_fe": 0.1,
                "flag_mg_fe": 1 if i == 3 else 0,
                "flag_sp": 1 if i in (0, 1) else 0,
                "snr_px_ccd3": 20.0 if i == 2 else 80.0,
            }
        )
    return _write(tmp_path / "p.parquet", preds), _write(tmp_path / "galah.csv", refs)


def test_galah_quality_cuts_and_table8(tmp_path):
    pred, cat = _galah(tmp_path)
    result = compare_external(pred, cat, str(tmp_path / "o"), ExternalConfig(survey="galah"))
    c = result.counts
    assert c["matched"] == c["matched_by_id"] == 12  # s0..s10 by sobject_id, J11 by tmass_id
    assert c["passing_cuts"] == 9  # flag_sp removes 2, snr_px_ccd3 <= 30 removes 1
    assert c["cut: snr_px_ccd3 > 30"] == 1 and c["cut: flag_sp == 0"] == 2
    assert result.cuts_applied == ["snr_px_ccd3 > 30", "flag_sp == 0"] and not result.cuts_missing
    overall = {r["label"]: r for r in result.table7 if r["class"] == "all"}
    assert overall["teff"]["n"] == 9 and overall["teff"]["mu"] == pytest.approx(40.0)
    assert overall["feh"]["n"] == 8  # the -9999.99 placeholder is not a value
    assert overall["logg"]["mu"] == pytest.approx(0.02, abs=1e-6)  # survey labels are float32
    (mg,) = result.table8
    assert mg["element"] == "MG" and mg["n"] == 8 and mg["mu"] == pytest.approx(0.02)  # flag_mg_fe != 0 dropped
    assert result.notes == [  # the catalogue's own notes, from specllm.io.surveys.read_survey
        "catalogue: snr_px_ccd3 > 30: 11 of 12 rows pass",
        "catalogue: flag_sp == 0: 10 of 12 rows pass",
        "catalogue: 1 label values were NaN, null or placeholders (<= -9999): read as missing",
    ]
    rows = _rows(tmp_path / "o" / "table8.csv")
    assert list(rows[0]) == ["subset", "element", "n", "mu", "sigma", "median", "sigma_mad"]
    assert "[Mg/Fe]" in (tmp_path / "o" / "report.md").read_text()


def test_missing_cut_column_is_reported_not_silent(tmp_path):
    pred, _ = _galah(tmp_path)
    refs = [{"sobject_id": f"s{i}", "teff": 5800.0, "logg": 4.4, "fe_h": 0.0, "flag_sp": 0} for i in range(12)]
    cat = _write(tmp_path / "dr3.csv", refs)
    result = compare_external(pred, cat, str(tmp_path / "o"), ExternalConfig(survey="galah"))
    assert result.cuts_missing == ["snr_px_ccd3 > 30"] and result.cuts_applied == ["flag_sp == 0"]
    assert result.counts["matched_by_id"] == 11  # no position columns: ids alone ("J11" is no sobject_id here)
    assert "NOT applied" in (tmp_path / "o" / "report.md").read_text()


def test_apogee_aspcapflag_cut_element_flags_and_duplicates(tmp_path):
    """APOGEE through specllm.io.surveys: the paper's ASPCAPFLAG == 0 (any bit, not only STAR_BAD) and
    <X>_FE_FLAG == 0; an EXTRATARG duplicate entry of a star neither matches nor makes its id ambiguous."""
    stars = [
        {"id": "2M10000000+2000000", "ra": 150.0, "dec": 20.0, "teff": 4500.0, "values": {"MG": 0.10}},
        {"id": "2M10000400+2000000", "ra": 150.0167, "dec": 20.0, "teff": 4600.0, "aspcapflag": 1},  # bit 0
        {"id": "2M10000800+2000000", "ra": 150.0333, "dec": 20.0, "teff": 4700.0, "flags": {"MG": 1}},
        {"id": "2M10000000+2000000", "ra": 150.0, "dec": 20.0, "teff": 9999.0, "extratarg": 16},  # duplicate
        {"id": "2M10001200+2000000", "ra": 150.05, "dec": 20.0, "teff": 4900.0, "values": {"MG": 0.30}},
    ]
    allstar = tmp_path / "allStar.fits"
    allstar_table(stars).write(allstar)
    preds = [
        _prediction(i, "K", stars[i]["teff"] + 30.0, 2.0, 0.0, spec_id=stars[i]["id"], obsid=None, mg_fe=mg)
        for i, mg in ((0, 0.15), (1, 0.0), (2, 0.0), (4, 0.35))
    ]
    result = compare_external(
        _write(tmp_path / "p.parquet", preds), str(allstar), str(tmp_path / "o"), ExternalConfig(survey="apogee")
    )
    c = result.counts
    assert c["matched_by_id"] == 4 and c["ambiguous_id"] == 0 and c["passing_cuts"] == 3
    assert result.cuts_applied == ["ASPCAPFLAG == 0"] and c["cut: ASPCAPFLAG == 0"] == 1
    teff = next(r for r in result.table7 if r["class"] == "all" and r["label"] == "teff")
    assert teff["n"] == 3 and teff["mu"] == pytest.approx(30.0)  # the ASPCAPFLAG = 1 star is not compared
    (mg,) = result.table8
    assert mg["n"] == 2 and mg["mu"] == pytest.approx(0.05)  # MG_FE_FLAG != 0 and the cut star dropped
    assert any("EXTRATARG" in n for n in result.notes)


def test_gaia_eso_absolute_abundances_compared_as_x_fe(tmp_path):
    cat = tmp_path / "ges.csv"
    cat.write_text(
        "CNAME,RA,DEC,TEFF,LOGG,FEH,MG1,LIM_MG1\n"
        "10000000+2000000,150.0,20.0,5000,4.5,-0.20,7.50,0\n"  # [Mg/Fe] = 7.50 - 7.53 + 0.20 = 0.17
        "10000400+2000000,150.0167,20.0,5100,4.4,0.10,7.70,0\n"  # 7.70 - 7.53 - 0.10 = 0.07
        "10000800+2000000,150.0333,20.0,5200,4.3,0.00,7.90,1\n"  # an upper limit: no [Mg/Fe]
    )
    preds = [
        _prediction(i, "G", 5000.0 + 100 * i, 4.5, 0.0, spec_id=cname, obsid=None, mg_fe=mg)
        for i, (cname, mg) in enumerate(
            [("10000000+2000000", 0.2), ("10000400+2000000", 0.1), ("10000800+2000000", 0.5)]
        )
    ]
    result = compare_external(
        _write(tmp_path / "p.parquet", preds), str(cat), str(tmp_path / "o"), ExternalConfig(survey="gaia-eso")
    )
    assert result.counts["matched_by_id"] == 3 and result.cuts_applied == result.cuts_missing == []
    (mg,) = result.table8
    assert mg["element"] == "MG" and mg["n"] == 2 and mg["mu"] == pytest.approx(0.03, abs=1e-5)
    assert "specllm vs Gaia-ESO" in (tmp_path / "o" / "report.md").read_text()


def test_partial_coverage_rows_are_reported_separately(tmp_path):
    preds, refs = [], []
    for i in range(20):
        partial = i >= 12
        dt = 300.0 if partial else 10.0
        preds.append(_prediction(i, "K", 4500.0 + dt, 4.5, 0.0, partial=partial, coverage=0.74 if partial else 0.97))
        refs.append({"obsid": 1000 + i, "teff": 4500.0, "logg": 4.5, "feh": 0.0})
    pred, cat = _write(tmp_path / "p.parquet", preds), _write(tmp_path / "c.csv", refs)
    result = compare_external(pred, cat, str(tmp_path / "o"))
    assert result.counts["partial_matched"] == 8
    by = {(r["subset"], r["class"], r["label"]): r for r in result.table7}
    assert by["full", "all", "teff"]["mu"] == pytest.approx(10.0) and by["full", "all", "teff"]["n"] == 12
    assert by["partial", "all", "teff"]["mu"] == pytest.approx(300.0) and by["partial", "all", "teff"]["n"] == 8
    report = (tmp_path / "o" / "report.md").read_text()
    assert "## Partial-coverage spectra" in report and "300 ± 0 (8)" in report
    matched = pq.read_table(tmp_path / "o" / "matched.parquet").to_pydict()
    assert sum(matched["partial"]) == 8


def test_partial_falls_back_to_coverage(tmp_path):
    coverages = [0.5, 0.7, 0.9, 0.96, 1.0]
    preds = [_prediction(i, "G", 5800.0, 4.4, 0.0, coverage=c) for i, c in enumerate(coverages)]
    for p in preds:
        del p["partial"]
    refs = [{"obsid": 1000 + i, "teff": 5800.0, "logg": 4.4, "feh": 0.0} for i in range(5)]
    result = compare_external(
        _write(tmp_path / "p.parquet", preds), _write(tmp_path / "c.csv", refs), str(tmp_path / "o")
    )
    assert ExternalConfig().partial_coverage == InferConfig().partial_coverage  # one threshold, infer's
    assert result.counts["partial_matched"] == sum(c < InferConfig().partial_coverage for c in coverages) == 3


def test_rows_infer_could_not_predict_are_counted_not_compared(tmp_path):
    preds = [_prediction(i, "G", 5800.0, 4.4, 0.0) for i in range(4)]
    preds[1].update(status="poor coverage", teff=None, logg=None, feh=None)
    refs = [{"obsid": 1000 + i, "teff": 5700.0, "logg": 4.4, "feh": 0.0} for i in range(4)]
    result = compare_external(
        _write(tmp_path / "p.parquet", preds), _write(tmp_path / "c.csv", refs), str(tmp_path / "o")
    )
    assert result.counts["status_not_ok"] == {"poor coverage": 1}
    assert result.counts["matched"] == 3


def test_plots_and_report_are_written(tmp_path):
    pred, cat = _pair(tmp_path, n=60)  # >= hexbin_min_rows: hexbin density
    result = compare_external(pred, cat, str(tmp_path / "o"))
    assert result.figures == ["one_to_one_teff.png", "one_to_one_logg.png", "one_to_one_feh.png"]
    for name in result.figures:
        data = (tmp_path / "o" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    report = (tmp_path / "o" / "report.md").read_text()
    assert "## Table 7" in report and "![one_to_one_teff.png](one_to_one_teff.png)" in report
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["counts"]["matched"] == 60 and summary["survey"] == "generic"
    (tmp_path / "small").mkdir()
    small = compare_external(*_pair(tmp_path / "small", n=6), str(tmp_path / "s"))
    assert (tmp_path / "s" / small.figures[0]).read_bytes().startswith(PNG_MAGIC)  # scatter below hexbin_min_rows


def test_miles_npz_as_catalogue(tmp_path):
    np.savez(
        tmp_path / "miles.npz",
        flux=np.ones((3, 50), np.float32),
        wave=np.arange(50.0),
        miles_id=np.array([1, 2, 272]),
        teff=np.array([5000.0, np.nan, 6024.0]),
        logg=np.array([4.0, 3.0, 4.5]),
        feh=np.array([0.0, 0.1, -1.44]),
    )
    preds = [
        _prediction(i, "G", t, 4.5, -1.4, spec_id=sid, obsid=None, file=f"miles.npz#{i}", partial=True, mg_fe=0.1)
        for i, (sid, t) in enumerate([("miles-0001", 5100.0), ("miles-0002", 5000.0), ("miles-0272", 6000.0)])
    ]
    result = compare_external(
        _write(tmp_path / "p.parquet", preds),
        str(tmp_path / "miles.npz"),
        str(tmp_path / "o"),
        ExternalConfig(survey="miles"),
    )
    assert result.counts["matched_by_id"] == 3
    teff = next(r for r in result.table7 if r["class"] == "all" and r["label"] == "teff")
    assert teff["n"] == 2 and teff["mu"] == pytest.approx((100.0 - 24.0) / 2)
    assert result.table8 == [] and "[Mg/Fe]" in result.notes[0]  # predicted, but MILES has no abundances
    assert "every matched spectrum covered only part of the grid" in (tmp_path / "o" / "report.md").read_text()


def test_survey_names_match_config_and_helpers(tmp_path):
    assert tuple(CATALOGUES) == get_args(SurveyName)  # the CLI's choices are the one registry's names
    assert all(isinstance(d, Survey | PlainTable) for d in CATALOGUES.values())
    assert CATALOGUES["gaia-eso"].key == "gaiaeso" and set(SURVEYS) == {"apogee", "galah", "gaiaeso"}
    with pytest.raises(ValueError, match="already registered"):
        register("miles", CATALOGUES["miles"])
    with pytest.raises(SpecllmError, match="unknown survey"):
        read_reference(str(tmp_path / "c.csv"), "sdss")
    assert element_title("TIII") == "[Ti II/Fe]" and element_title("MG") == "[Mg/Fe]"
    s = stats(np.array([1.0, 2.0, 3.0, np.nan]), 2)
    assert (s["n"], s["mu"]) == (3, 2.0) and s["sigma"] == pytest.approx((2 / 3) ** 0.5)  # ddof 0 (specllm.metrics)
    assert stats(np.array([1.0]), 2)["mu"] is None


def test_cli_prints_table7_csv_and_reports_bad_input_in_one_line(tmp_path):
    pred, cat = _pair(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(
        app, ["compare-external", pred, "--catalog", cat, "--out", str(tmp_path / "o"), "--survey", "lamost"]
    )
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines()[0] == "subset,class,label,n,mu,sigma,median,sigma_mad"
    bad = runner.invoke(
        app, ["compare-external", str(tmp_path / "absent.csv"), "--catalog", cat, "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2
    assert "absent.csv: no such file" in bad.output and "Traceback" not in bad.output
    noids = _write(tmp_path / "noids.csv", [{"teff": 5000.0}])
    bad = runner.invoke(app, ["compare-external", noids, "--catalog", cat, "--out", str(tmp_path / "z")])
    assert bad.exit_code == 2 and "noids.csv: no id" in bad.output
    nolabels = _write(tmp_path / "nolabels.csv", [{"obsid": 1, "mag": 3.0}])
    bad = runner.invoke(app, ["compare-external", pred, "--catalog", nolabels, "--out", str(tmp_path / "y")])
    assert bad.exit_code == 2 and "no reference column" in bad.output


# ---------------------------------------------------------------- real data (skipped where ../shared is absent)


@pytest.mark.skipif(not (SHARED / "lamost" / "dr1" / "catalog.csv").exists(), reason="../shared/data is absent")
def test_real_dr1_catalogue_joins_by_file_name(tmp_path):
    """Sanity, not a result: predictions = DR1 catalogue labels + a known offset, joined back to the catalogue."""
    cat = SHARED / "lamost" / "dr1" / "catalog.csv"
    names = sorted(p.name for p in (SHARED / "lamost" / "dr1" / "spectra").glob("*.fits.gz"))
    labels = {r["filename"]: r for r in pacsv.read_csv(cat).to_pylist()}
    preds = []
    for name in names:
        r = labels.get(name.removesuffix(".gz"))
        preds.append(
            {
                "file": f"spectra/{name}",
                "spec_id": name.removesuffix(".fits.gz"),
                "class": (r or {}).get("subclass", "G")[0],
                "teff": (r["teff"] + 50.0) if r else 5000.0,
                "logg": r["logg"] if r else 4.0,
                "feh": (r["feh"] - 0.1) if r else 0.0,
                "status": "ok",
                "partial": False,
            }
        )
    result = compare_external(
        _write(tmp_path / "p.parquet", preds), str(cat), str(tmp_path / "o"), ExternalConfig(survey="lamost")
    )
    assert result.counts["matched"] == 131 and result.counts["matched_by_id"] == 131
    overall = {r["label"]: r for r in result.table7 if r["class"] == "all"}
    assert overall["teff"]["mu"] == pytest.approx(50.0) and overall["feh"]["mu"] == pytest.approx(-0.1)


@pytest.mark.skipif(not (SHARED / "miles").exists(), reason="../shared/data is absent")
def test_real_miles_spectra_join_back_to_their_labels(tmp_path):
    """Sanity, not a result: the first 40 real MILES spectra read and cleaned, their labels + 30 K joined back."""
    from specllm.config import CleanConfig, GridConfig
    from specllm.io import iter_spectra
    from specllm.preprocess import clean_spectrum

    npz = SHARED / "miles" / "miles_984stars_fwhm2.5A.npz"
    preds = []
    for raw in iter_spectra(str(npz)):
        cleaned = clean_spectrum(raw.wave, raw.flux, raw.ivar, raw.ormask, GridConfig(), CleanConfig())
        teff = raw.meta["teff"]
        preds.append(
            {
                "file": raw.path,
                "spec_id": raw.meta["spec_id"],
                "class": "G",
                "teff": teff + 30.0 if teff is not None else None,
                "status": "ok",
                "coverage": cleaned.coverage,
                "partial": bool(cleaned.mask[-1]),
            }
        )
        if len(preds) == 40:
            break
    result = compare_external(
        _write(tmp_path / "p.parquet", preds), str(npz), str(tmp_path / "o"), ExternalConfig(survey="miles")
    )
    assert result.counts["matched_by_id"] == 40 and result.counts["partial_matched"] == 40
    teff = next(r for r in result.table7 if r["class"] == "all" and r["label"] == "teff")
    assert teff["mu"] == pytest.approx(30.0) and teff["n"] >= 35


def test_groups_by_the_catalogue_class_and_reports_flagged_rows_apart(tmp_path):
    """A K star the model called G is grouped as K (the catalogue's SUBCLASS); flagged rows are counted and shown
    apart; `partial` alone does not count as flagged."""
    preds, refs = [], []
    for i in range(12):
        true = "K" if i < 4 else "G"
        flag, reason = (8, "class") if i < 4 else ((4, "partial") if i == 4 else (0, ""))
        preds.append(
            _prediction(i, "G", 5000.0 + (300 if true == "K" else 10), 4.0, 0.0, flag=flag, flag_reason=reason)
        )
        refs.append(
            {"obsid": 1000 + i, "teff": 5000.0, "logg": 4.0, "feh": 0.0, "subclass": f"{true}5" if i != 11 else ""}
        )
    result = compare_external(
        _write(tmp_path / "p.parquet", preds), _write(tmp_path / "c.csv", refs), str(tmp_path / "o"),
        ExternalConfig(survey="lamost"),
    )  # fmt: skip
    t7 = {(r["subset"], r["class"], r["label"]): r for r in result.table7}
    assert t7["all", "K", "teff"]["n"] == 4 and t7["all", "K", "teff"]["mu"] == pytest.approx(300.0)
    assert t7["all", "G", "teff"]["n"] == 8  # row 11 has no catalogue class: its predicted class (G)
    assert t7["unflagged", "all", "teff"]["n"] == 8 and t7["unflagged", "all", "teff"]["mu"] == pytest.approx(10.0)
    assert t7["flagged", "K", "teff"]["n"] == 4 and t7["flagged", "G", "teff"]["n"] == 0
    assert result.counts["flagged_matched"] == 4 and result.counts["flagged_by_keyword"] == {"class": 4}
    assert "11 of 12 matched rows" in result.class_note and "`subclass`" in result.class_note
    report = (tmp_path / "o" / "report.md").read_text()
    assert "flagged by infer (other than `partial`): 4 of 12" in report and "### Flagged rows" in report
    assert pq.read_table(tmp_path / "o" / "matched.parquet").column("flagged").to_pylist().count(True) == 4


def test_predictions_without_flags_say_so(tmp_path):
    pred, cat = _pair(tmp_path, n=6)
    result = compare_external(pred, cat, str(tmp_path / "out"), ExternalConfig(survey="lamost"))
    assert result.counts["flagged_matched"] is None and {r["subset"] for r in result.table7} == {"all"}
    assert "no `flag` column" in (tmp_path / "out" / "report.md").read_text()
