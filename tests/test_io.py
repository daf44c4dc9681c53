"""Readers (specllm.io): the three LAMOST layouts identified by content, rejections, inputs, label catalogues."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

from specllm.errors import SpecllmError, SpectrumRejected
from specllm.io import expand_inputs, read_spectrum
from specllm.io.fitsfile import open_fits
from specllm.io.lamost import LAYOUT_COADD, LAYOUT_DR1, LAYOUT_IMAGE, header_meta
from specllm.io.lamost_catalog import LabelCatalog, file_key
from specllm.io.tables import ColumnNames, catalog_columns, float_column, read_catalog, read_table
from specllm.labels import reduce_class

from .fitsfactory import (
    COEFF0,
    COEFF1,
    log_grid,
    stellar_flux,
    write_catalog,
    write_coadd,
    write_dr1,
    write_image,
    write_medium_resolution,
    write_sdss,
)

SUFFIXES = [".fits", ".fits.gz"]


def _rejected(path) -> SpectrumRejected:
    with pytest.raises(SpectrumRejected) as info:
        read_spectrum(str(path))
    return info.value


# ---------------------------------------------------------------- the three layouts


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_coadd_layout_values_wavelength_meta(tmp_path, suffix):
    wave = log_grid(3909)
    flux = stellar_flux(wave, 5600.0, noise=0.01)
    ivar = np.linspace(0.0, 2.0, wave.size).astype(np.float32)
    ormask = np.zeros(wave.size, np.float32)
    ormask[100:110] = 4
    path = write_coadd(tmp_path / f"a{suffix}", obsid=937808200, wave=wave, flux=flux, ivar=ivar, ormask=ormask,
                       subclass="G3", snr=(5.0, 13.07, 29.38, 35.5, 30.25), ra=44.7381734, dec=7.4781477, z=-2.9e-4)  # fmt: skip
    raw = read_spectrum(str(path))
    assert raw.layout == LAYOUT_COADD
    assert raw.path == str(path)
    np.testing.assert_array_equal(raw.flux, flux)
    np.testing.assert_allclose(raw.wave, wave.astype(np.float32))  # COADD stores float32 wavelengths
    np.testing.assert_array_equal(raw.ivar, ivar)
    assert raw.ormask.dtype == np.int64 and raw.ormask[100:110].tolist() == [4] * 10 and raw.ormask.sum() == 40
    m = raw.meta
    assert m["obsid"] == 937808200 and m["data_release"] == "LAMOST DR10"
    assert (m["objclass"], m["subclass"]) == ("STAR", "G3")
    assert (m["snru"], m["snrg"], m["snrr"], m["snri"], m["snrz"]) == pytest.approx((5.0, 13.07, 29.38, 35.5, 30.25))
    assert (m["ra"], m["dec"], m["z"]) == pytest.approx((44.7381734, 7.4781477, -2.9e-4))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_image_layout_values_wavelength_meta(tmp_path, suffix):
    wave = log_grid(3906)
    flux = stellar_flux(wave, 6500.0)
    path = write_image(tmp_path / f"b{suffix}", obsid=103232, wave=wave, flux=flux, subclass="F4",
                       snr=(22.59, 94.11, 118.57, 155.86, 120.0), data_release="LAMOST DR8")  # fmt: skip
    raw = read_spectrum(str(path))
    assert raw.layout == LAYOUT_IMAGE
    np.testing.assert_array_equal(raw.flux, flux)
    np.testing.assert_array_equal(raw.wave, wave.astype(np.float32))  # the wavelength row, not COEFF0/COEFF1
    assert raw.meta["obsid"] == 103232 and raw.meta["data_release"] == "LAMOST DR8" and raw.meta["subclass"] == "F4"
    assert raw.meta["snrr"] == pytest.approx(118.57) and raw.meta["snri"] == pytest.approx(155.86)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_dr1_layout_wavelength_from_coefficients(tmp_path, suffix):
    path = write_dr1(
        tmp_path / f"spec-55862-B6212_sp06-003{suffix}", n=3904, subclass="F9", snr=(14.02, 71.41, 99.0, 98.0, 97.0)
    )
    raw = read_spectrum(str(path))
    assert raw.layout == LAYOUT_DR1
    expected = 10.0 ** (COEFF0 + COEFF1 * np.arange(3904))
    np.testing.assert_allclose(raw.wave, expected, rtol=1e-12)
    assert raw.wave[0] == pytest.approx(3699.985, abs=0.001) and raw.wave[-1] == pytest.approx(9088.66, abs=0.01)
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(raw.flux, hdul[0].data[0])
        np.testing.assert_array_equal(raw.ormask, hdul[0].data[4])
    m = raw.meta
    assert m["obsid"] is None and m["data_release"] == "LAMOST DR1"
    assert (m["snrg"], m["snrr"], m["snri"]) == pytest.approx((71.41, 99.0, 98.0))  # from SN_G, SN_R, SN_I
    assert m["subclass"] == "F9" and m["fits_filename"] == "spec-55862-B6212_sp06-003.fits"


@pytest.mark.parametrize(
    "writer, layout, misleading",
    [
        (write_coadd, LAYOUT_COADD, "spec-dr1-B6212_sp06-003.fits"),  # plain bytes, DR1-like name
        (write_image, LAYOUT_IMAGE, "COADD.fits.gz"),  # plain bytes named .gz
        (write_dr1, LAYOUT_DR1, "dr10-coadd.fits"),  # gzip bytes named .fits
    ],
)
def test_layout_identified_by_content_not_name(tmp_path, writer, layout, misleading):
    honest = writer(tmp_path / ("orig.fits.gz" if misleading.endswith(".fits") else "orig.fits"))
    renamed = tmp_path / misleading
    shutil.copy(honest, renamed)
    raw = read_spectrum(str(renamed))
    assert raw.layout == layout
    np.testing.assert_array_equal(raw.flux, read_spectrum(str(honest)).flux)


@pytest.mark.parametrize("writer", [write_coadd, write_image, write_dr1])
def test_fast_reader_matches_astropy(tmp_path, writer):
    path = str(writer(tmp_path / "x.fits.gz"))
    fast, slow = open_fits(path, fast=True), open_fits(path, fast=False)
    assert [h.name for h in fast] == [h.name for h in slow]
    assert fast[0]._astropy is None and slow[0]._astropy is not None  # really two code paths
    for key in ("OBSID", "SUBCLASS", "SNRR", "SN_R", "COEFF0", "RA"):
        assert fast[0].header.get(key) == slow[0].header.get(key)
    if fast[0].image() is not None:
        np.testing.assert_array_equal(fast[0].image(), slow[0].image())
    else:
        for k, v in fast[1].table_row(0).items():
            np.testing.assert_array_equal(v, slow[1].table_row(0)[k])


def test_long_string_header_falls_back_to_astropy(tmp_path):
    path = write_coadd(tmp_path / "long.fits.gz", obsid=42, extra={"TCOMMENT": "x" * 150})  # a CONTINUE card
    raw = read_spectrum(str(path))
    assert raw.layout == LAYOUT_COADD and raw.meta["obsid"] == 42


def test_placeholder_and_missing_header_values_become_none():
    h = fits.Header()
    h["OBSID"], h["SNRR"], h["SNRI"], h["RA"], h["Z"], h["SUBCLASS"] = "n/a", -9999.0, 41.5, -9999.0, 0.001, "  K3 "
    meta = header_meta(h, LAYOUT_IMAGE)
    assert meta["obsid"] is None and meta["snrr"] is None and meta["ra"] is None
    assert meta["snri"] == 41.5 and meta["z"] == 0.001 and meta["subclass"] == "K3" and meta["dec"] is None


# ---------------------------------------------------------------- recognised and rejected


def test_medium_resolution_rejected_with_reason(tmp_path):
    exc = _rejected(write_medium_resolution(tmp_path / "med-58408-TD230151N343645T01_sp01-015.fits.gz"))
    assert exc.reason == "unsupported layout" and "medium-resolution" in exc.detail


def test_sdss_rejected_with_reason(tmp_path):
    exc = _rejected(write_sdss(tmp_path / "spec-0266-51602-0031.fits.gz"))
    assert exc.reason == "unsupported layout" and "SDSS" in exc.detail


def test_unknown_layout(tmp_path):
    path = tmp_path / "other.fits"
    fits.PrimaryHDU(np.ones((3, 500), np.float32)).writeto(path)
    exc = _rejected(path)
    assert exc.reason == "unknown layout"


def test_five_row_image_without_wavelengths_is_unknown(tmp_path):
    path = tmp_path / "nowave.fits"
    fits.PrimaryHDU(np.ones((5, 3000), np.float32)).writeto(path)  # neither a wavelength row nor COEFF0/COEFF1
    assert _rejected(path).reason == "unknown layout"


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: p.write_text("SIMPLE = T\nthis is not FITS\n"), "not a readable FITS file"),
        (lambda p: p.write_bytes(b""), "not a readable FITS file"),
        (lambda p: p.write_bytes(b"\x1f\x8b" + b"garbage" * 10), "gzip"),
    ],
    ids=["text", "empty", "bad-gzip"],
)
def test_unreadable_files(tmp_path, make, words):
    path = tmp_path / "bad.fits.gz"
    make(path)
    exc = _rejected(path)
    assert exc.reason == "unreadable" and words in exc.detail and "\n" not in str(exc)


def test_truncated_gzip_and_truncated_fits(tmp_path):
    good = write_coadd(tmp_path / "good.fits.gz").read_bytes()
    (tmp_path / "trunc.fits.gz").write_bytes(good[: len(good) // 2])
    assert _rejected(tmp_path / "trunc.fits.gz").reason == "unreadable"
    plain = gzip.decompress(good)
    (tmp_path / "trunc.fits").write_bytes(plain[: len(plain) - 5000])
    assert _rejected(tmp_path / "trunc.fits").reason == "unreadable"


def test_missing_file(tmp_path):
    exc = _rejected(tmp_path / "nope.fits.gz")
    assert exc.reason == "unreadable" and exc.detail == "no such file"


def test_decreasing_wavelengths_rejected(tmp_path):
    wave = log_grid()[::-1].copy()
    path = write_coadd(tmp_path / "rev.fits", wave=wave, flux=stellar_flux(wave))
    exc = _rejected(path)
    assert exc.reason == "bad wavelength" and "not increasing" in exc.detail


# ---------------------------------------------------------------- inputs


def test_expand_inputs_directories_globs_and_files(tmp_path):
    for rel in ("b/2.fits.gz", "b/1.fits", "a/x/3.fit.gz", "a/4.FITS.GZ", "a/notes.txt", "c.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    walked = [p.replace(str(tmp_path) + "/", "") for p in expand_inputs([str(tmp_path)])]
    assert walked == ["a/4.FITS.GZ", "a/x/3.fit.gz", "b/1.fits", "b/2.fits.gz"]
    globbed = [p.replace(str(tmp_path) + "/", "") for p in expand_inputs([str(tmp_path / "**" / "*.fits*")])]
    assert globbed == ["b/1.fits", "b/2.fits.gz"]
    assert list(expand_inputs(["given/as/is.fits"])) == ["given/as/is.fits"]  # reported later as unreadable
    with pytest.raises(SpecllmError, match="matches no file"):
        list(expand_inputs([str(tmp_path / "*.nothing")]))


def test_expand_inputs_is_lazy(tmp_path):
    stream = expand_inputs([str(tmp_path / "missing-dir-file.fits"), str(tmp_path / "*.none")])
    assert next(stream).endswith("missing-dir-file.fits")  # the failing glob is not evaluated yet


# ---------------------------------------------------------------- label catalogues


def test_file_key_and_reduce_class():
    assert file_key("dir/spec-55862-B6212_sp06-003.fits.gz") == "spec-55862-B6212_sp06-003"
    assert file_key(" spec-1.FIT ") == "spec-1" and file_key("101008.fits") == "101008"
    cases = {"G3": "G", "A7V": "A", "dM2": "M", "gM0": "M", "sdM1": "M", "K": "K", "O": None, "DA": None,
             "Non": None, "": None, None: None, "WD": None, "B6": None, "F0": "F"}  # fmt: skip
    assert {s: reduce_class(s) for s in cases} == cases


def test_catalog_join_by_obsid_and_by_filename(tmp_path):
    rows = [
        dict(obsid=11, filename="", subclass="G2", teff=5700.0, logg=4.4, feh=-0.1, snrr=50.0, rv=12.5, split="x"),
        dict(
            obsid=None,
            filename="spec-55862-B6212_sp06-003.fits.gz",
            subclass="K1",
            teff=4800.0,
            logg=4.6,
            feh=0.2,
            snrr=-9999.0,
            rv=-3.0,
            split="y",
        ),
    ]
    cat = LabelCatalog(str(write_catalog(tmp_path / "cat.csv", rows)))
    by_obsid = cat.lookup(11, "whatever/name.fits.gz")
    assert by_obsid["teff"] == 5700.0 and by_obsid["subclass"] == "G2" and by_obsid["rv"] == 12.5
    by_name = cat.lookup(None, "/data/dr1/spec-55862-B6212_sp06-003.fits")
    assert by_name["teff"] == 4800.0 and by_name["snrr"] is None  # -9999 placeholder -> missing
    assert by_name["cat_split"] == "y"  # a reserved shard name is kept under a prefix
    assert cat.lookup(12, "other.fits") is None
    assert {f.name for f in cat.extra_fields} == {"rv", "cat_split"}


@pytest.mark.parametrize("missing", ["teff", "logg", "feh"])
def test_catalog_missing_label_column_names_it(tmp_path, missing):
    row = dict(obsid=1, teff=5000.0, logg=4.0, feh=0.0)
    del row[missing]
    with pytest.raises(SpecllmError, match=f"lacks required column '{missing}'"):
        LabelCatalog(str(write_catalog(tmp_path / "cat.csv", [row])))


def test_catalog_without_any_key(tmp_path):
    with pytest.raises(SpecllmError, match="'obsid'"):
        LabelCatalog(str(write_catalog(tmp_path / "cat.csv", [dict(teff=5000.0, logg=4.0, feh=0.0)])))


def test_catalog_duplicates_raise_on_lookup(tmp_path):
    rows = [dict(obsid=7, teff=5000.0, logg=4.0, feh=0.0), dict(obsid=7, teff=5100.0, logg=4.1, feh=0.1),
            dict(obsid=8, teff=5200.0, logg=4.2, feh=0.2)]  # fmt: skip
    cat = LabelCatalog(str(write_catalog(tmp_path / "cat.csv", rows)))
    with pytest.raises(KeyError, match="obsid 7"):
        cat.lookup(7, "a.fits")
    assert cat.lookup(8, "b.fits")["teff"] == 5200.0


def test_catalog_case_insensitive_columns_and_formats(tmp_path):
    table = pa.table({"OBSID": [5, 6], "TEFF": [5500.0, 6000.0], "LOGG": [4.0, 3.5], "FEH": [-0.5, float("nan")]})
    pq.write_table(table, tmp_path / "cat.parquet")
    Table({"obsid": [5, 6], "teff": [5500.0, 6000.0], "logg": [4.0, 3.5], "feh": [-0.5, np.nan],
           "spec": np.ones((2, 3))}).write(tmp_path / "cat.fits")  # fmt: skip
    for name in ("cat.parquet", "cat.fits"):
        cat = LabelCatalog(str(tmp_path / name))
        assert cat.lookup(5, "")["teff"] == 5500.0
        assert cat.lookup(6, "")["feh"] is None  # NaN -> missing
    assert "spec" not in read_catalog(str(tmp_path / "cat.fits")).column_names  # vector columns are not labels


def test_catalog_unreadable_or_absent(tmp_path):
    with pytest.raises(SpecllmError, match="no such catalogue"):
        read_catalog(str(tmp_path / "absent.csv"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(SpecllmError, match="unreadable catalogue"):
        read_catalog(str(tmp_path / "bad.parquet"))


def test_float_column_placeholders_and_types():
    table = pa.table(
        {
            "x": pa.array([1.5, None, -9999.0, -9999.99, float("inf"), -12.0]),
            "i": pa.array([3, None, -9999, 4, 5, 6]),
            "b": pa.array([True, False, None, True, True, False]),
            "t": pa.array(["1.5", "-9999", None, "2", "nan", "3"]),
            "word": pa.array(["a"] * 6),
        }
    )
    values = float_column(table, "x")
    assert values[0] == 1.5 and values[5] == -12.0 and np.isnan(values[1:5]).all()
    assert np.isnan(float_column(table, "i")[[1, 2]]).all() and float_column(table, "i")[0] == 3.0
    assert float_column(table, "b")[:2].tolist() == [1.0, 0.0] and np.isnan(float_column(table, "b")[2])
    assert float_column(table, "t")[0] == 1.5 and np.isnan(float_column(table, "t")[[1, 2, 4]]).all()
    with pytest.raises(SpecllmError, match="x.csv: column 'word' is not numeric"):
        float_column(table, "word", "x.csv")


def test_column_names_case_insensitive_first_spelling_wins():
    names = ColumnNames(["TEFF", " Logg ", "teff", "FE_H"])
    assert names.find("teff") == "TEFF" and names.find("LOGG") == " Logg " and names.find("feh") is None
    assert names.first(("feh", "Fe_H")) == "FE_H" and names.first(("x", "y")) is None


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".fits", ".fts", ".fts.gz", ".FITS.GZ", ".npz"])
def test_read_table_any_format_any_case(tmp_path, suffix):
    path = str(tmp_path / f"cat{suffix}")
    data = {"OBSID": np.array([1, 2, 3]), "Teff": np.array([5000.0, -9999.0, 6000.0])}
    if suffix == ".csv":
        pacsv.write_csv(pa.table(data), path)
    elif suffix == ".parquet":
        pq.write_table(pa.table(data), path)
    elif suffix == ".npz":
        np.savez(path, **data, flux=np.ones(7))  # a 1-D array of another length is not a column
    else:
        Table(data).write(path, format="fits")
    table = read_table(path)
    assert table.n == 3 and table.has("obsid") and table.has("TEFF") and not table.has("logg")
    assert table.values("obsid") == [1, 2, 3]
    teff = table.floats("teff")
    assert teff[0] == 5000.0 and np.isnan(teff[1]) and teff[2] == 6000.0
    assert {c.lower() for c in catalog_columns(path)} >= {"obsid", "teff"}


def test_read_table_empty_or_absent(tmp_path):
    with pytest.raises(SpecllmError, match="no such file"):
        read_table(str(tmp_path / "absent.csv"))
    (tmp_path / "empty.csv").write_text("obsid,teff\n")
    with pytest.raises(SpecllmError, match="empty.csv: the table is empty"):
        read_table(str(tmp_path / "empty.csv"))


# ---------------------------------------------------------------- hostile inputs (issue 24): caps, non-regular files


def test_gzip_bomb_is_refused_at_the_default_cap_holding_no_more_than_it(tmp_path):
    from .fitsfactory import write_gzip_bomb

    bomb = write_gzip_bomb(tmp_path / "bomb.fits.gz", inflated_mb=300)  # ~300 KB on disk
    assert bomb.stat().st_size < 2**20
    exc = _rejected(bomb)
    assert exc.reason == "too large" and "inflates to more than 256 MB" in exc.detail and "--max-input-mb" in exc.detail


def test_caps_are_configurable_and_name_the_reason(tmp_path):
    from specllm.config import ReadConfig
    from specllm.io import iter_spectra

    from .fitsfactory import write_declared_naxis2, write_gzip_bomb

    small = ReadConfig(max_input_mb=2)
    bomb = write_gzip_bomb(tmp_path / "bomb.fits.gz", inflated_mb=3)
    with pytest.raises(SpectrumRejected, match="too large: the gzip inflates to more than 2 MB"):
        read_spectrum(str(bomb), small)
    good = write_coadd(tmp_path / "good.fits")
    plain = tmp_path / "big.fits"
    plain.write_bytes(good.read_bytes() + bytes(3 * 2**20))  # trailing bytes: 3 MB on disk
    with pytest.raises(SpectrumRejected, match="the file holds 3 MB"):
        read_spectrum(str(plain), small)
    assert read_spectrum(str(plain)).layout == LAYOUT_COADD  # within the default cap the padding is ignored
    for name in ("naxis.fits", "naxis.fits.gz"):
        path = write_declared_naxis2(tmp_path / name)
        exc = _rejected(path)
        assert exc.reason == "too large" and "HDU 1 declares" in exc.detail and "1000000000" in exc.detail
        [item] = list(iter_spectra(str(path)))  # what infer and ingest see: one reject, with the file named
        assert isinstance(item, SpectrumRejected) and item.path == str(path)
    # a declared size within the cap but beyond the file: truncated, as before
    exc = _rejected(write_declared_naxis2(tmp_path / "ten.fits", naxis2=10))
    assert exc.reason == "unreadable"


@pytest.mark.parametrize("suffix", [".fits", ".fits.gz"])
def test_a_declared_size_beyond_the_cap_never_reaches_astropy(tmp_path, suffix, monkeypatch):
    """The astropy fallback (here forced by a CONTINUE card the fast path does not parse) checks the declared
    size too, before astropy reads any data."""
    from .fitsfactory import write_declared_naxis2

    path = write_declared_naxis2(tmp_path / ("n" + suffix))
    data = gzip.decompress(path.read_bytes()) if suffix.endswith(".gz") else path.read_bytes()
    i = data.find(b"OBSID   = ")
    data = data[:i] + b"CONTINUE  'x'".ljust(80) + data[i + 80 :]  # the fast path hands such a file to astropy
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    exc = _rejected(path)
    assert exc.reason == "too large" and "HDU 1 declares" in exc.detail


def _fifo(path) -> str:
    import os

    os.mkfifo(path)
    return str(path)


def bounded(seconds: float):
    """Run the decorated function in a forked child and fail if it takes longer than `seconds` (a FIFO read blocks
    inside C code, where no signal handler runs): a regression fails the test instead of hanging the suite."""
    import multiprocessing

    def wrap(fn):
        proc = multiprocessing.get_context("fork").Process(target=fn)
        proc.start()
        proc.join(seconds)
        if proc.is_alive():
            proc.kill()
            proc.join()
            pytest.fail(f"still reading after {seconds} s: a FIFO or device was opened or read")
        assert proc.exitcode == 0, "the checks failed in the child process (its traceback is above)"
        return fn

    return wrap


def test_fifos_devices_and_sockets_are_refused_before_any_read(tmp_path):
    import socket

    from specllm.io import expand_inputs, expand_spectra, iter_spectra, load_spectrum
    from specllm.io.tables import read_catalog

    folder = tmp_path / "in"
    folder.mkdir()
    write_coadd(folder / "good.fits.gz")
    fifos = [_fifo(folder / "a.fits.gz"), _fifo(tmp_path / "x.npz"), _fifo(tmp_path / "x.parquet")]
    fifos += [_fifo(tmp_path / "x.csv"), _fifo(tmp_path / "t.fits")]
    sock_path = str(tmp_path / "s.fits")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(sock_path)

    @bounded(30)
    def check():
        paths = list(expand_spectra(expand_inputs([str(folder), *fifos[1:], "/dev/zero", sock_path])))
        assert paths[0].endswith("a.fits.gz") and len(paths) == 2 + len(fifos[1:]) + 2
        for path in paths:
            items = list(iter_spectra(path))
            if path.endswith("good.fits.gz"):
                assert items[0].layout == LAYOUT_COADD
                continue
            [exc] = items
            assert isinstance(exc, SpectrumRejected) and exc.reason == "not a regular file", (path, exc)
            kind = "socket" if path == sock_path else "character device" if path == "/dev/zero" else "FIFO"
            assert kind in exc.detail and exc.path == path
            with pytest.raises(SpectrumRejected, match="not a regular file"):
                load_spectrum(path)
        for catalogue in (fifos[3], fifos[2], "/dev/zero"):
            with pytest.raises(SpecllmError, match="not a regular file"):
                read_catalog(catalogue)

    sock.close()
