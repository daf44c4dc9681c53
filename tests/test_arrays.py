"""Spectra given as arrays (MILES npz, wave/flux tables): reading, conventions, partial coverage, ingest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from specllm.config import ArrayConfig, CleanConfig, GridConfig, IngestConfig
from specllm.errors import SpectrumRejected
from specllm.io import expand_spectra, is_array_source, iter_spectra, load_spectrum
from specllm.io.arrays import LAYOUT_ARRAY, array_count, iter_array_spectra, read_array_row
from specllm.io.arrays.common import miles_spec_id, split_virtual
from specllm.physics import air_to_vacuum
from specllm.preprocess import clean_spectrum

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"
MILES = SHARED / "miles" / "miles_984stars_fwhm2.5A.npz"
GRID = GridConfig()


def _continuum(wave: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flux = 1.0 + 0.3 * np.sin(wave / 300.0) - 0.4 * np.exp(-0.5 * ((wave - 6564.6) / 3.0) ** 2)
    return (flux + rng.normal(0, 0.005, wave.size)).astype(np.float32)


def _miles_like(path: Path, n: int = 3) -> Path:
    """An npz in the MILES layout: air wavelengths 3540.5-7409.6 A at 0.9 A, FWHM 2.5 A, miles_id and labels."""
    wave = 3540.5 + 0.9 * np.arange(4300)
    flux = np.stack([_continuum(wave, i) for i in range(n)])
    np.savez_compressed(
        path,
        flux=flux,
        wave=wave,
        miles_id=np.arange(1, n + 1) * 100,
        teff=np.array([5800.0, np.nan, 4500.0][:n]),
        logg=np.array([4.4, 2.5, 1.9][:n]),
        feh=np.array([0.0, -1.0, -0.5][:n]),
        fwhm_angstrom=np.float32(2.5),
    )
    return path


def _lamost_like_wave() -> np.ndarray:
    return 10 ** (3.5682 + 1e-4 * np.arange(3900))


# ---------------------------------------------------------------- MILES-like npz


def test_miles_like_npz_streams_spectra_with_ids_labels_and_vacuum_wavelengths(tmp_path):
    path = _miles_like(tmp_path / "lib.npz")
    items = list(iter_array_spectra(str(path)))
    assert len(items) == 3 and all(s.layout == LAYOUT_ARRAY for s in items)
    first = items[0]
    assert first.path == f"{path}#0"
    assert first.meta["spec_id"] == "miles-0100" and first.meta["data_release"] == "MILES"
    assert first.meta["teff"] == 5800.0 and first.meta["logg"] == pytest.approx(4.4)
    assert items[1].meta["teff"] is None  # NaN in the file: no label, not a number
    assert first.meta["wave_medium"] == "air" and first.meta["resolution_matched"] == 1800.0
    assert first.wave[0] == pytest.approx(air_to_vacuum(np.array([3540.5]))[0])
    assert first.wave[0] > 3541.0  # shifted to vacuum by ~1 A
    assert first.ivar is None and first.ormask is None


def test_partial_coverage_spectrum_is_masked_past_its_red_edge(tmp_path):
    raw = next(iter_array_spectra(str(_miles_like(tmp_path / "lib.npz"))))
    cleaned = clean_spectrum(raw.wave, raw.flux, raw.ivar, raw.ormask, GRID, CleanConfig())
    grid = GRID.wavelengths()
    assert cleaned.mask[grid > 7412.0].all()  # beyond MILES: filled, flagged
    assert not cleaned.mask[(grid > 3810) & (grid < 7400)].any()  # inside: observed
    assert 0.70 < cleaned.coverage < 0.76  # ~3612 of 4901 grid points
    assert cleaned.coverage >= CleanConfig().min_coverage


def test_resolution_matching_can_be_switched_off(tmp_path):
    path = str(_miles_like(tmp_path / "lib.npz"))
    raw = next(iter_array_spectra(path, ArrayConfig(match_resolution=None)))
    assert raw.meta["resolution_matched"] is None
    wave = 3540.5 + 0.9 * np.arange(4300)
    np.testing.assert_allclose(raw.flux, _continuum(wave, 0), rtol=1e-6)


def test_pickled_npz_members_are_never_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, flux=np.array([object()], dtype=object), wave=np.arange(10.0))
    with pytest.raises(SpectrumRejected) as exc:
        list(iter_array_spectra(str(path)))
    assert "pickle" in str(exc.value)


def test_npz_missing_flux_names_the_reason(tmp_path):
    path = tmp_path / "noflux.npz"
    np.savez(path, wave=np.arange(100.0))
    with pytest.raises(SpectrumRejected) as exc:
        list(iter_array_spectra(str(path)))
    assert exc.value.reason == "missing column" and exc.value.path == str(path)


def test_npz_one_spectrum_with_error_array_and_nan_pixels(tmp_path):
    wave = np.linspace(3700, 9000, 5000)
    flux = _continuum(wave).astype(np.float64)
    flux[2000:2010] = np.nan
    err = np.full(wave.size, 0.01)
    path = tmp_path / "star.npz"
    np.savez(path, wave=wave, flux=flux, error=err, teff=5000.0)
    (raw,) = list(iter_array_spectra(str(path)))
    assert raw.meta["spec_id"] == "star" and raw.meta["teff"] == 5000.0
    assert raw.ivar is not None and raw.ivar[0] == pytest.approx(1e4, rel=1e-3)
    assert raw.ormask is not None and raw.ormask[2000:2010].all() and raw.ormask[:2000].sum() == 0
    cleaned = clean_spectrum(raw.wave, raw.flux, raw.ivar, raw.ormask, GRID, CleanConfig())
    gap = (GRID.wavelengths() > wave[2001]) & (GRID.wavelengths() < wave[2008])
    assert cleaned.mask[gap].all() and cleaned.coverage > 0.95


# ---------------------------------------------------------------- tables


def _wide_parquet(path: Path, rows: int = 3, bad_row: int | None = None) -> Path:
    wave = _lamost_like_wave()
    waves, fluxes = [], []
    for i in range(rows):
        w = wave if i != bad_row else wave[:-5]
        waves.append(w.tolist())
        fluxes.append(_continuum(wave, i).tolist())
    table = pa.table(
        {
            "obsid": pa.array([101 + i for i in range(rows)], pa.int64()),
            "ra": [10.0 + i for i in range(rows)],
            "dec": [-5.0] * rows,
            "teff": [5000.0 + 100 * i for i in range(rows)],
            "wavelength": waves,
            "flux": fluxes,
        }
    )
    pq.write_table(table, path)
    return path


def test_wide_parquet_one_spectrum_per_row(tmp_path):
    path = str(_wide_parquet(tmp_path / "spectra.parquet"))
    assert is_array_source(path) and array_count(path) == 3
    items = list(iter_array_spectra(path))
    assert [s.meta["obsid"] for s in items] == [101, 102, 103]
    assert [s.meta["spec_id"] for s in items] == ["101", "102", "103"]
    assert items[2].meta["ra"] == 12.0 and items[2].meta["teff"] == 5200.0
    assert items[0].meta["wave_medium"] == "vacuum" and items[0].meta["resolution_matched"] is None
    cleaned = clean_spectrum(items[0].wave, items[0].flux, items[0].ivar, items[0].ormask, GRID, CleanConfig())
    assert cleaned.coverage > 0.99


def test_a_bad_row_is_reported_and_the_rest_go_through(tmp_path):
    path = str(_wide_parquet(tmp_path / "spectra.parquet", rows=3, bad_row=1))
    items = list(iter_spectra(path))
    assert isinstance(items[1], SpectrumRejected) and items[1].reason == "bad shape"
    assert items[1].path == f"{path}#1"
    assert items[0].meta["obsid"] == 101 and items[2].meta["obsid"] == 103


def test_long_csv_grouped_by_id(tmp_path):
    wave = np.linspace(3700, 9000, 800)
    lines = ["spec_id,wave,flux,teff"]
    for sid, teff in (("a", 5000), ("b", 6000)):
        lines += [f"{sid},{w:.3f},{f:.5f},{teff}" for w, f in zip(wave, _continuum(wave), strict=True)]
    path = tmp_path / "long.csv"
    path.write_text("\n".join(lines) + "\n")
    assert is_array_source(str(path)) and array_count(str(path)) == 2
    items = list(iter_array_spectra(str(path)))
    assert [s.meta["spec_id"] for s in items] == ["a", "b"]
    assert [s.meta["teff"] for s in items] == [5000.0, 6000.0]
    assert items[0].wave.size == 800


def test_long_csv_with_scattered_ids_is_rejected(tmp_path):
    path = tmp_path / "scattered.csv"
    rows = ["spec_id,wave,flux"] + [f"{'ab'[i % 2]},{4000 + i},{1.0}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(SpectrumRejected) as exc:
        list(iter_array_spectra(str(path)))
    assert "not contiguous" in str(exc.value)


def test_label_csv_without_flux_is_not_an_array_source(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("obsid,teff\n1,5000\n")
    assert not is_array_source(str(path))
    assert not is_array_source(str(tmp_path / "absent.npz"))


def test_fits_tables_wide_and_single_with_header_labels(tmp_path):
    wave = _lamost_like_wave()
    wide = tmp_path / "wide.fits"
    cols = [
        fits.Column("NAME", "10A", array=np.array(["s1", "s2"])),
        fits.Column("WAVE", f"{wave.size}D", array=np.stack([wave, wave])),
        fits.Column("FLUX", f"{wave.size}E", array=np.stack([_continuum(wave, 0), _continuum(wave, 1)])),
    ]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(wide)
    assert is_array_source(str(wide))
    assert [s.meta["spec_id"] for s in iter_array_spectra(str(wide))] == ["s1", "s2"]

    single = tmp_path / "synthetic.fits"
    primary = fits.PrimaryHDU()
    primary.header.update(T_EFF=5500.0, LOGG=4.5, MH=-0.25)
    table = fits.BinTableHDU.from_columns(
        [fits.Column("Wavelength", "D", array=wave), fits.Column("SpecificIntensity", "E", array=_continuum(wave))]
    )
    fits.HDUList([primary, table]).writeto(single)
    (raw,) = list(iter_array_spectra(str(single)))
    assert raw.meta["spec_id"] == "synthetic"
    assert (raw.meta["teff"], raw.meta["logg"], raw.meta["feh"]) == (5500.0, 4.5, -0.25)


def test_survey_fits_files_are_not_array_sources(tmp_path):
    image = tmp_path / "lamost.fits"
    fits.PrimaryHDU(np.zeros((5, 200), np.float32)).writeto(image)
    coadd = tmp_path / "coadd.fits"
    primary = fits.PrimaryHDU()
    primary.header["OBSID"] = 1
    cols = [
        fits.Column("WAVELENGTH", "200D", array=np.zeros((1, 200))),
        fits.Column("FLUX", "200E", array=np.zeros((1, 200))),
    ]
    fits.HDUList([primary, fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(coadd)
    assert not is_array_source(str(image)) and not is_array_source(str(coadd))


# ---------------------------------------------------------------- virtual paths and ingest


@pytest.mark.parametrize(
    ("name", "spec_id"),
    [("star.npz", "star"), ("Star.FITS.GZ", "Star"), ("a.b.csv.gz", "a.b"), ("x.fit", "x"), ("y.pq", "y")],
)
def test_a_file_of_one_spectrum_names_it_without_the_format_suffix(tmp_path, name, spec_id):
    wave = np.linspace(3700, 9000, 50)
    if name.lower().endswith(".npz"):
        np.savez(tmp_path / name, wave=wave, flux=_continuum(wave))
    elif name.lower().endswith((".csv.gz", ".pq")):
        table = pa.table({"wave": wave, "flux": _continuum(wave)})
        if name.endswith(".pq"):
            pq.write_table(table, tmp_path / name)
        else:
            import pyarrow.csv as pacsv

            with pa.CompressedOutputStream(str(tmp_path / name), "gzip") as out:
                pacsv.write_csv(table, out)
    else:
        cols = [fits.Column("WAVE", "D", array=wave), fits.Column("FLUX", "E", array=_continuum(wave))]
        hdul = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)])
        hdul.writeto(tmp_path / name)
    path = str(tmp_path / name)
    assert is_array_source(path) and array_count(path) == 1
    (raw,) = list(iter_array_spectra(path))
    assert raw.meta["spec_id"] == spec_id and raw.path == f"{path}#0"
    assert split_virtual(raw.path) == (path, 0) and split_virtual(path) is None


def test_miles_ids():
    assert miles_spec_id(272) == "miles-0272" and miles_spec_id(np.int64(1)) == "miles-0001"


def test_virtual_paths_expand_and_load_one_spectrum(tmp_path):
    path = str(_miles_like(tmp_path / "lib.npz"))
    assert list(expand_spectra([path, "other.fits"])) == [f"{path}#0", f"{path}#1", f"{path}#2", "other.fits"]
    assert load_spectrum(f"{path}#2").meta["spec_id"] == "miles-0300"
    assert read_array_row(f"{path}#0").meta["spec_id"] == "miles-0100"  # a backwards step reopens the file
    with pytest.raises(SpectrumRejected):
        read_array_row(f"{path}#7")
    with pytest.raises(SpectrumRejected):
        load_spectrum(path)  # an array file is read through its virtual paths


def test_ingest_accepts_an_array_source(tmp_path):
    from specllm import ingest
    from specllm.shards import read_table

    path = str(_miles_like(tmp_path / "lib.npz"))
    result = ingest.run_ingest([path], str(tmp_path / "shards"), config=IngestConfig(shard_size=2))
    assert (result.read, result.kept) == (3, 3)
    table = read_table(str(tmp_path / "shards")).to_pydict()
    assert table["spec_id"] == ["miles-0100", "miles-0200", "miles-0300"]
    assert table["file"] == [f"{path}#{i}" for i in range(3)]
    assert table["layout"] == ["array"] * 3 and table["data_release"] == ["MILES"] * 3
    assert table["teff"][0] == 5800.0 and table["teff"][1] is None
    assert all(0.70 < c < 0.76 for c in table["coverage"])
    mask = np.asarray(table["mask"][0])
    assert mask[GRID.wavelengths() > 7412.0].all()


# ---------------------------------------------------------------- the real MILES library


@pytest.mark.skipif(not MILES.exists(), reason="../shared/data/miles is absent")
def test_real_miles_npz():
    path = str(MILES)
    assert is_array_source(path) and array_count(path) == 984
    grid = GRID.wavelengths()
    n_teff, first = 0, None
    for i, raw in enumerate(iter_array_spectra(path)):
        n_teff += raw.meta["teff"] is not None
        if i == 0:
            first = raw
    assert n_teff == 917
    assert first.meta["spec_id"] == "miles-0001" and first.meta["teff"] == 5305.0
    cleaned = clean_spectrum(first.wave, first.flux, first.ivar, first.ormask, GRID, CleanConfig())
    assert cleaned.mask[grid > 7412.0].all() and 0.72 < cleaned.coverage < 0.75
