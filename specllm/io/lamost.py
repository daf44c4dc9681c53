"""LAMOST low-resolution spectra (R~1800) in their three FITS layouts, identified by content.

(a) DR1, pipeline v2.6: primary image (5, N) = flux, ivar, normalised flux, andmask, ormask; no wavelength row,
    wavelength = 10 ** (COEFF0 + COEFF1 * i); no OBSID, SNRs in SN_U..SN_Z.
(b) DR2 to DR8 v1: primary image (5, N) = flux, ivar, wavelength, andmask, ormask; OBSID, DATA_V, SNRU..SNRZ.
(c) DR8 v2 and later: empty primary HDU with the keywords, then a one-row binary table COADD with array columns
    FLUX, IVAR, WAVELENGTH, ANDMASK, ORMASK (NORMALIZATION).
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from ..errors import SpectrumRejected
from ..labels import clean_number
from .base import RawSpectrum, as_obsid, clean_position
from .fitsfile import Hdu

LAYOUT_DR1 = "lamost-dr1-image"
LAYOUT_IMAGE = "lamost-image"
LAYOUT_COADD = "lamost-coadd"

_BANDS = ("u", "g", "r", "i", "z")


def _is_wavelength_row(row: np.ndarray) -> bool:
    finite = np.isfinite(row)
    if not finite.all() or row.size < 10:
        return False
    return bool(2500.0 < row[0] < 5000.0 and 7000.0 < row[-1] < 12000.0 and np.all(np.diff(row) > 0))


def header_meta(header: fits.Header, layout: str) -> dict:
    """The header facts specllm uses, under its own names (missing keywords give None)."""

    def get(*keys):
        for k in keys:
            v = header.get(k)
            if v is not None and v != "":
                return v
        return None

    meta = {
        "obsid": get("OBSID"),
        "data_release": get("DATA_V") or ("LAMOST DR1" if layout == LAYOUT_DR1 else None),
        "objclass": get("CLASS"),
        "subclass": get("SUBCLASS"),
        "ra": get("RA", "RA_OBS"),
        "dec": get("DEC", "DEC_OBS"),
        "z": get("Z"),
        "fits_filename": get("FILENAME"),
    }
    for b in _BANDS:
        meta[f"snr{b}"] = get(f"SNR{b.upper()}", f"SN_{b.upper()}")
    if meta["obsid"] is not None:
        try:
            meta["obsid"] = as_obsid(meta["obsid"])
        except ValueError as exc:  # 1.5, 1e30: kept aside, the spectrum is rejected (ingest) or failed (infer)
            meta["obsid"], meta["obsid_invalid"] = None, f"header OBSID {exc}"
    for k in ("z", *(f"snr{b}" for b in _BANDS)):
        meta[k] = clean_number(meta[k])  # None for text, NaN and -9999 (the pipeline's "not measured")
    for k in ("ra", "dec"):  # only the placeholder reads as missing: 1e308 or -1e308 is a bad position
        try:
            meta[k] = clean_position(meta[k])
        except ValueError:
            meta[k] = None
    for k in ("objclass", "subclass", "data_release", "fits_filename"):
        if meta[k] is not None:
            meta[k] = str(meta[k]).strip()
    return meta


def identify(hdus: list[Hdu]) -> str | None:
    """The LAMOST low-resolution layout of a file's HDUs, or None if it is not one."""
    prim = hdus[0].header
    if prim.get("NAXIS") == 2 and prim.get("NAXIS2") == 5 and prim.get("NAXIS1", 0) > 100:
        if _is_wavelength_row(np.asarray(hdus[0].image()[2], dtype=np.float64)):
            return LAYOUT_IMAGE
        if "COEFF0" in prim and "COEFF1" in prim:
            return LAYOUT_DR1
        return None
    coadd = next((h for h in hdus[1:] if h.name == "COADD" and h.is_table), None)
    if coadd is not None:
        names = {n.upper() for n in coadd.columns}
        if {"FLUX", "IVAR", "WAVELENGTH", "ORMASK"} <= names and coadd.header.get("NAXIS2") == 1:
            return LAYOUT_COADD
    return None


def load(hdus: list[Hdu], path: str, layout: str) -> RawSpectrum:
    header = hdus[0].header
    if layout == LAYOUT_COADD:
        row = next(h for h in hdus[1:] if h.name == "COADD").table_row(0)
        flux, ivar, wave, ormask = row["FLUX"], row["IVAR"], row["WAVELENGTH"], row["ORMASK"]
    else:
        data = hdus[0].image()
        flux, ivar, ormask = data[0], data[1], data[4]
        if layout == LAYOUT_IMAGE:
            wave = data[2]
        else:
            c0, c1 = float(header["COEFF0"]), float(header["COEFF1"])
            wave = 10.0 ** (c0 + c1 * np.arange(data.shape[1], dtype=np.float64))
    wave = np.asarray(wave, dtype=np.float64)
    sizes = {np.size(a) for a in (wave, flux, ivar, ormask)}
    if len(sizes) > 1:
        raise SpectrumRejected("bad layout", f"flux, ivar, ormask and wavelength differ in length ({sorted(sizes)})")
    if wave.size < 10 or not np.all(np.diff(wave) > 0):
        raise SpectrumRejected("bad wavelength", "wavelengths are not increasing")
    return RawSpectrum(
        path=path,
        layout=layout,
        wave=wave,
        flux=np.asarray(flux, dtype=np.float32),
        ivar=np.asarray(ivar, dtype=np.float32),
        ormask=np.asarray(ormask).astype(np.int64),
        meta=header_meta(header, layout),
    )
