"""Survey catalogue readers: real column layouts, flags, placeholders, positions from designations, real tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from specllm.config import STAGE2_ELEMENTS
from specllm.errors import SpecllmError
from specllm.io.surveys import APOGEE, GALAH, designation_positions, element_label, read_survey
from specllm.io.tables import catalog_columns, read_catalog

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"
PLACEHOLDER = -9999.99
GALAH_DR4_ELEMENTS = [el for el in STAGE2_ELEMENTS if el not in ("CI", "P", "S", "TIII")]  # DR4 has no such column


# ---------------------------------------------------------------- writers in the real column layouts (shared with
# tests/test_crossmatch.py)


def allstar_table(stars: list[dict]) -> Table:
    """An APOGEE DR16 allStar-like table. Each star: id, ra, dec and optional overrides
    (aspcapflag, extratarg, teff, logg, fe_h, fe_h_flag, values {EL: value}, flags {EL: flag}).
    Element values default to 0.01 * (element index + 1) + 0.1 * star index, flags to 0."""
    cols: dict[str, list] = {"APOGEE_ID": [], "RA": [], "DEC": [], "ASPCAPFLAG": [], "EXTRATARG": []}
    cols |= {"TEFF": [], "LOGG": [], "FE_H": [], "FE_H_FLAG": []}
    for el in STAGE2_ELEMENTS:
        cols[f"{el}_FE"] = []
        cols[f"{el}_FE_FLAG"] = []
    for i, star in enumerate(stars):
        cols["APOGEE_ID"].append(star["id"])
        cols["RA"].append(star["ra"])
        cols["DEC"].append(star["dec"])
        cols["ASPCAPFLAG"].append(star.get("aspcapflag", 0))
        cols["EXTRATARG"].append(star.get("extratarg", 0))
        cols["TEFF"].append(star.get("teff", 4000.0 + 100 * i))
        cols["LOGG"].append(star.get("logg", 2.0 + 0.1 * i))
        cols["FE_H"].append(star.get("fe_h", -0.1 * i))
        cols["FE_H_FLAG"].append(star.get("fe_h_flag", 0))
        for k, el in enumerate(STAGE2_ELEMENTS):
            cols[f"{el}_FE"].append(star.get("values", {}).get(el, round(0.01 * (k + 1) + 0.1 * i, 4)))
            cols[f"{el}_FE_FLAG"].append(star.get("flags", {}).get(el, 0))
    dtypes = {"ASPCAPFLAG": np.int64, "EXTRATARG": np.int32, "FE_H_FLAG": np.int32}
    dtypes |= {f"{el}_FE_FLAG": np.int32 for el in STAGE2_ELEMENTS}
    return Table(
        {
            k: np.asarray(v, dtype=dtypes.get(k, np.float32 if k not in ("APOGEE_ID", "RA", "DEC") else None))
            for k, v in cols.items()
        }
    )


def galah_table(stars: list[dict]) -> Table:
    """A GALAH DR4 allstar-like table. Each star: sobject_id, tmass_id, ra, dec, optional snr, flag_sp, fe_h,
    flag_fe_h, values {el: value}, flags {el: flag}."""
    cols: dict[str, list] = {k: [] for k in ("sobject_id", "tmass_id", "ra", "dec", "flag_sp", "snr_px_ccd3")}
    cols |= {"teff": [], "logg": [], "fe_h": [], "flag_fe_h": []}
    for el in GALAH_DR4_ELEMENTS:
        cols[element_label(el)] = []
        cols[f"flag_{element_label(el)}"] = []
    for i, star in enumerate(stars):
        cols["sobject_id"].append(star["sobject_id"])
        cols["tmass_id"].append(star.get("tmass_id", ""))
        cols["ra"].append(star["ra"])
        cols["dec"].append(star["dec"])
        cols["flag_sp"].append(star.get("flag_sp", 0))
        cols["snr_px_ccd3"].append(star.get("snr", 60.0))
        cols["teff"].append(star.get("teff", 5000.0 + 100 * i))
        cols["logg"].append(star.get("logg", 4.0 + 0.1 * i))
        cols["fe_h"].append(star.get("fe_h", -0.05 * i))
        cols["flag_fe_h"].append(star.get("flag_fe_h", 0))
        for k, el in enumerate(GALAH_DR4_ELEMENTS):
            cols[element_label(el)].append(star.get("values", {}).get(el, round(0.02 * (k + 1) - 0.1 * i, 4)))
            cols[f"flag_{element_label(el)}"].append(star.get("flags", {}).get(el, 0))
    ints = {"sobject_id": np.int64, "flag_sp": np.int32, "flag_fe_h": np.int32}
    ints |= {f"flag_{element_label(el)}": np.int32 for el in GALAH_DR4_ELEMENTS}
    return Table({k: np.asarray(v, dtype=ints.get(k)) for k, v in cols.items()})


def _apogee_stars() -> list[dict]:
    return [
        {"id": "2M10000000+2000000", "ra": 150.0, "dec": 20.0},
        {"id": "2M10000400+2000000", "ra": 150.0167, "dec": 20.0, "values": {"C": PLACEHOLDER, "O": np.nan}, "flags": {"MG": 1}, "teff": PLACEHOLDER},
        {"id": "2M10000800+2000000", "ra": 150.0333, "dec": 20.0, "aspcapflag": 1 << 23},
        {"id": "2M10000000+2000000", "ra": 150.0, "dec": 20.0, "extratarg": 16},
        {"id": "2M10001200+2000000", "ra": np.nan, "dec": np.nan, "fe_h_flag": 2},
    ]  # fmt: skip


@pytest.fixture
def allstar(tmp_path) -> Path:
    path = tmp_path / "allStar-like.fits"
    allstar_table(_apogee_stars()).write(path)
    return path


def test_apogee_allstar_flags_placeholders_and_duplicates(allstar):
    cat = read_survey(str(allstar), "apogee")
    el = {e: i for i, e in enumerate(STAGE2_ELEMENTS)}
    assert cat.n_rows == 5 and list(cat.ids) == [s["id"] for s in _apogee_stars()]
    assert cat.present == [lab.name for lab in APOGEE.labels if lab.name not in ("m_h", "alpha_m")]
    # star 0: everything valid
    assert cat.labels["mg_fe"][0] == pytest.approx(0.01 * (el["MG"] + 1))
    assert cat.labels["teff"][0] == 4000.0 and cat.labels["fe_h"][0] == pytest.approx(0.0)
    assert all(np.isfinite(cat.labels[element_label(e)][0]) for e in STAGE2_ELEMENTS)
    # star 1: placeholder and NaN read as missing, MG_FE_FLAG nulls only Mg, the rest stays
    assert np.isnan(cat.labels["c_fe"][1]) and np.isnan(cat.labels["o_fe"][1]) and np.isnan(cat.labels["teff"][1])
    assert np.isnan(cat.labels["mg_fe"][1])
    assert cat.labels["si_fe"][1] == pytest.approx(0.01 * (el["SI"] + 1) + 0.1)
    assert cat.labels["logg"][1] == pytest.approx(2.1)
    # star 2: ASPCAPFLAG != 0 nulls every label, but the star is still matchable
    assert not cat.star_ok[2] and cat.matchable[2]
    assert all(np.isnan(values[2]) for values in cat.labels.values())
    # star 3: EXTRATARG duplicate bit -> never matched; star 4: position from its designation, FE_H_FLAG nulls fe_h
    assert list(cat.matchable) == [True, True, True, False, True]
    assert cat.ra[4] == pytest.approx(150.0 + 15 * 12.005 / 3600) and cat.dec[4] == pytest.approx(20.0 + 0.05 / 3600)
    assert np.isnan(cat.labels["fe_h"][4]) and np.isfinite(cat.labels["mg_fe"][4])
    assert cat.counts["mg_fe"] == {"present": 5, "flagged": 1, "cut": 1, "valid": 3}
    assert cat.labels["mg_fe"].dtype == np.float32


def test_apogee_quality_cuts_off_keeps_flagged_labels(allstar):
    cat = read_survey(str(allstar), "apogee", quality_cuts=False)
    assert np.isfinite(cat.labels["mg_fe"][1]) and np.isfinite(cat.labels["teff"][2])
    assert np.isnan(cat.labels["c_fe"][1])  # a placeholder stays missing


def test_same_reader_for_fits_csv_parquet(allstar, tmp_path):
    table = Table.read(allstar)
    table.write(tmp_path / "a.csv")
    pq.write_table(read_catalog(str(allstar)), tmp_path / "a.parquet")
    ref = read_survey(str(allstar), "apogee")
    for name in ("a.csv", "a.parquet"):
        other = read_survey(str(tmp_path / name), "apogee")
        assert list(other.ids) == list(ref.ids)
        for label, values in ref.labels.items():
            np.testing.assert_allclose(
                other.labels[label], values, rtol=1e-6, equal_nan=True, err_msg=f"{name} {label}"
            )


def test_galah_dr4_cuts(tmp_path):
    stars = [
        {"sobject_id": 1, "tmass_id": "10000000+2000000", "ra": 150.0, "dec": 20.0, "flags": {"MG": 1}},
        {"sobject_id": 2, "ra": 151.0, "dec": 20.0, "snr": 25.0},  # snr_px_ccd3 <= 30
        {"sobject_id": 3, "ra": 152.0, "dec": 20.0, "flag_sp": 8},
        {"sobject_id": 4, "ra": 153.0, "dec": 20.0, "snr": 30.5, "values": {"CA": np.nan}, "flag_fe_h": 1},
    ]
    path = tmp_path / "galah_dr4_allstar-like.fits"
    galah_table(stars).write(path)
    cat = read_survey(str(path), "galah")
    k = {e: i for i, e in enumerate(GALAH_DR4_ELEMENTS)}
    assert list(cat.ids) == ["1", "2", "3", "4"]
    assert list(cat.star_ok) == [True, False, False, True]
    assert list(cat.cuts) == ["snr_px_ccd3 > 30", "flag_sp == 0"]  # each cut's own rows, for compare-external
    assert list(cat.cuts["snr_px_ccd3 > 30"]) == [True, False, True, True]
    assert np.isnan(cat.labels["mg_fe"][0]) and cat.labels["na_fe"][0] == pytest.approx(0.02 * (k["NA"] + 1))
    for i in (1, 2):
        assert all(np.isnan(v[i]) for v in cat.labels.values())
    assert np.isnan(cat.labels["ca_fe"][3]) and np.isnan(cat.labels["fe_h"][3])
    assert cat.labels["teff"][3] == 5300.0 and cat.labels["ni_fe"][3] == pytest.approx(0.02 * (k["NI"] + 1) - 0.3)
    for absent in ("ci_fe", "p_fe", "s_fe", "tiii_fe"):  # DR4 has no such columns: null, not an error
        assert absent not in cat.present and np.isnan(cat.labels[absent]).all()
    assert cat.present[:3] == ["teff", "logg", "fe_h"] and len(cat.present) == 3 + len(GALAH_DR4_ELEMENTS)
    assert {lab.name for lab in GALAH.labels} >= set(cat.present)


def test_gaia_eso_log_eps_to_x_fe(tmp_path):
    path = tmp_path / "ges.csv"
    path.write_text(
        "CNAME,RA,DEC,TEFF,LOGG,FEH,MG1,LIM_MG1,TI2,LIM_TI2\n"
        "10000000+2000000,150.0,20.0,5000,4.5,-0.20,7.50,0,4.80,0\n"
        "10000400+2000000,150.0167,20.0,5100,4.4,0.10,7.70,1,-9999,0\n"
    )
    cat = read_survey(str(path), "gaia-eso")
    assert cat.present == ["teff", "logg", "fe_h", "mg_fe", "tiii_fe"]
    assert cat.labels["mg_fe"][0] == pytest.approx(7.50 - 7.53 + 0.20, abs=1e-6)
    assert cat.labels["tiii_fe"][0] == pytest.approx(4.80 - 4.90 + 0.20, abs=1e-6)
    assert np.isnan(cat.labels["mg_fe"][1])  # an upper limit is not a label
    assert np.isnan(cat.labels["tiii_fe"][1])  # placeholder


def test_designation_positions():
    ra, dec = designation_positions(["2M19550016+4435356", "J05351234-0512345", "00000000-0030000", "VESTA", None])
    assert ra[0] == pytest.approx(15 * (19 + 55 / 60 + 0.165 / 3600)) and dec[0] == pytest.approx(
        44 + 35 / 60 + 35.65 / 3600
    )
    assert ra[1] == pytest.approx(15 * (5 + 35 / 60 + 12.345 / 3600)) and dec[1] == pytest.approx(
        -(5 + 12 / 60 + 34.55 / 3600)
    )
    assert dec[2] == pytest.approx(-(30 / 60 + 0.05 / 3600))  # "-00": the sign is kept
    assert np.isnan(ra[3:]).all() and np.isnan(dec[3:]).all()


def test_missing_position_or_labels_fails_at_once(tmp_path):
    no_pos = tmp_path / "no_pos.csv"
    no_pos.write_text("KIC,TEFF,LOGG\n1,5000,4.4\n")
    with pytest.raises(SpecllmError, match=r"no_pos.csv: APOGEE catalogue lacks RA and DEC"):
        read_survey(str(no_pos), "apogee")
    no_dec = tmp_path / "no_dec.csv"
    no_dec.write_text("RA,TEFF\n10.0,5000\n")
    with pytest.raises(SpecllmError, match=r"lacks DEC"):
        read_survey(str(no_dec), "apogee")
    no_labels = tmp_path / "no_labels.fits"
    Table({"APOGEE_ID": ["2M10000000+2000000"], "RA": [150.0], "DEC": [20.0], "J": [10.0]}).write(no_labels)
    with pytest.raises(
        SpecllmError, match=r"no_labels.fits: APOGEE catalogue has none of its label columns \(TEFF, LOGG, FE_H"
    ):
        read_survey(str(no_labels), "apogee")
    bad_ids = tmp_path / "bad_ids.csv"
    bad_ids.write_text("APOGEE_ID,TEFF\nVESTA,5000\n")
    with pytest.raises(SpecllmError, match=r"no row with a valid position"):
        read_survey(str(bad_ids), "apogee")
    with pytest.raises(SpecllmError, match=r"unknown survey"):
        read_survey(str(bad_ids), "sdss")
    with pytest.raises(SpecllmError, match=r"no such catalogue"):
        read_survey(str(tmp_path / "absent.fits"), "apogee")


def test_read_catalog_column_subset(allstar):
    names = catalog_columns(str(allstar))
    assert names[:3] == ["APOGEE_ID", "RA", "DEC"] and "MG_FE_FLAG" in names
    t = read_catalog(str(allstar), columns=["APOGEE_ID", "MG_FE"])
    assert t.column_names == ["APOGEE_ID", "MG_FE"] and t.num_rows == 5


# ---------------------------------------------------------------- the real tables in ../shared/data


def _shared(rel: str) -> str:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{rel} not available")
    return str(path)


def test_real_apokasc_v71():
    cat = read_survey(_shared("apogee/APOKASC_Catalog.v7.1.fits"), "apogee")
    assert cat.n_rows == 2826 and cat.matchable.all()
    assert cat.present == ["teff", "logg", "m_h", "c_fe", "n_fe"]
    assert cat.columns_used["teff"] == "CORR_ASPCAP TEFF" and cat.columns_used["id"] == "2MASS ID"
    # ASPCAPFLAGS lists CFE_WARN/NFE_WARN for almost every star: ASPCAPFLAG == 0 (paper) leaves none
    assert not cat.star_ok.any() and all(np.isnan(v).all() for v in cat.labels.values())
    loose = read_survey(_shared("apogee/APOKASC_Catalog.v7.1.fits"), "apogee", quality_cuts=False)
    assert loose.counts["teff"]["valid"] == 2439 and loose.counts["c_fe"]["valid"] == 133  # -9999 placeholders
    # the 2MASS designations agree with RA/DEC (float32 in this file) to well under the match radius
    ra, dec = designation_positions(read_catalog(cat.path, ["2MASS ID"]).column(0))
    from astropy.coordinates import SkyCoord

    sep = SkyCoord(ra, dec, unit="deg").separation(SkyCoord(cat.ra, cat.dec, unit="deg")).arcsec
    assert np.median(sep) < 0.1 and sep.max() < 1.0


def test_real_apokasc3_positions_from_2mass_ids():
    cat = read_survey(_shared("apogee/apokasc3_dr17_logg_cal.fits"), "apogee")
    assert cat.n_rows == 11059 and cat.matchable.all() and cat.present == ["teff", "logg", "fe_h"]
    assert cat.position_source.startswith("2MASS-style designation in 2MASS_ID")
    assert 279 < cat.ra.min() and cat.ra.max() < 302 and 36 < cat.dec.min() and cat.dec.max() < 53  # Kepler field
    assert any("ASPCAPFLAG" in note and "not applied" in note for note in cat.notes)


def test_real_lamost_dr2_apogee_dr12():
    cat = read_survey(_shared("apogee/lamost_dr2_apogee_dr12_labels_1387.fits"), "apogee")
    assert cat.n_rows == 1387 and cat.present == ["teff", "logg", "m_h", "alpha_m"]
    assert cat.columns_used["dec"] == "Dec" and cat.counts["teff"]["valid"] == 1387


def test_real_galah_dr3_m67():
    cat = read_survey(_shared("galah/galah_dr3_allstar_m67_lite.csv"), "galah")
    assert cat.n_rows == 813 and cat.present == ["teff", "logg", "fe_h"]
    assert int(cat.star_ok.sum()) == 540  # flag_sp == 0; this file has no CCD3 S/N, so that cut is reported skipped
    assert any("snr_px_ccd3" in note and "not applied" in note for note in cat.notes)
    assert abs(np.median(cat.ra) - 132.85) < 0.5 and abs(np.median(cat.dec) - 11.8) < 0.5  # M67
