"""Spectra given as arrays with their own wavelength grid: the MILES npz and any table of wave/flux.

Sources (the format is told by the file name, the content by the column names, case-insensitively):

- `.npz` (read without pickle): `flux` 1-D (one spectrum) or 2-D (one row per spectrum) and `wave` (or
  `wavelength`, `lambda`; `loglam` = log10 wavelength) 1-D (shared) or 2-D (per row); optional `ivar` (or `error`),
  ids (`spec_id`, `obsid`, `miles_id`, `id`, `name`), `ra`, `dec`, labels `teff`, `logg`, `feh` (`fe_h`, `m_h`),
  0-d `fwhm_angstrom` and `medium` ('air' or 'vacuum'). The MILES file (it has `miles_id`) is in air wavelengths
  with FWHM 2.5 A, and its ids become `miles-NNNN`.
- Parquet, CSV or FITS tables: either wide (`wave` and `flux` array columns, one spectrum per row) or long (scalar
  `wave` and `flux` columns: one spectrum, or one per run of equal ids when an id column is present). Every other
  scalar column (ids, ra, dec, labels) is kept as metadata. FITS: the first table HDU with such columns; header
  `AIRORVAC`/`FWHM` are read. Parquet: schema metadata `medium`/`fwhm_angstrom`.

Each spectrum becomes a `RawSpectrum` (layout 'array', path `FILE#i`) that goes through the same
`preprocess.clean_spectrum` as every survey file: wavelengths the grid needs but the source lacks are masked there
(MILES stops at 7410 A, so the grid beyond is mask=True and its coverage is ~0.74). Before that the reader only
translates the source's conventions into LAMOST's: air -> vacuum wavelengths, non-finite flux -> a bad pixel
(ormask bit), and a stated resolution broadened to LAMOST's R~1800 (`ArrayConfig.match_resolution`); the physics
of both is `specllm.physics`.

One loader per format, as `io.lamost` is one per survey: `npz`, `parquet`, `csvfile` and `fitstable` each name
their file suffixes (`SUFFIXES`, from `io.base`) and give `identify(path)` (cheap: names, footers, headers) and
`load(path)`; `layout` holds what the table formats share, `common` the column-name conventions and virtual paths.

Rows are streamed one at a time (npz members are decompressed row by row, Parquet read in batches, FITS
memory-mapped), so memory stays bounded whatever the number of spectra.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ...config import ArrayConfig, ReadConfig
from ...errors import SpectrumRejected
from ...labels import clean_number
from ...physics import air_to_vacuum, broaden
from ..base import RawSpectrum, check_regular
from . import csvfile, fitstable, npz, parquet
from .common import (
    BAD_PIXEL,
    CLASS_KEYS,
    COORD_KEYS,
    FLUX_KEYS,
    ID_KEYS,
    LABEL_KEYS,
    LAYOUT_ARRAY,
    VIRTUAL_SEP,
    WAVE_KEYS,
    SourceInfo,
    first,
    lower_map,
    miles_spec_id,
    rejected,
    split_virtual,
    virtual_path,
)

__all__ = [
    "LAYOUT_ARRAY",
    "FLUX_KEYS",
    "WAVE_KEYS",
    "array_count",
    "is_array_source",
    "iter_array_spectra",
    "miles_spec_id",
    "read_array_row",
    "split_virtual",
    "virtual_path",
]

# One loader per format, each with its file name suffixes, a cheap `identify(path)` and `load(path)`.
LOADERS = (npz, parquet, csvfile, fitstable)


def _loader(path: str):
    """The loader whose suffixes the file name ends with, or None."""
    lower = path.lower()
    return next((loader for loader in LOADERS if lower.endswith(loader.SUFFIXES)), None)


def is_array_source(path: str) -> bool:
    """True for a file of spectra given as arrays (npz, wave/flux table); False for survey FITS and anything else.

    Cheap: an npz by name, a table by its column names (Parquet footer, CSV header line, FITS headers).
    """
    path = str(path)
    loader = _loader(path)
    if loader is None or not os.path.isfile(path):
        return False
    try:
        return loader.identify(path)
    except Exception:  # unreadable files are not array sources; the FITS reader gives the reason
        return False


def array_count(path: str, limits: ReadConfig = ReadConfig()) -> int:
    """The number of spectra in an array source (read from headers where the format allows)."""
    loader = _loader(path)
    with _one_line(path):
        if loader is npz:
            return npz.count(path, limits.max_bytes)
        info, _, rows = loader.load(path, limits.max_bytes)
        rows.close()
        return info.n


@contextlib.contextmanager
def _one_line(path: str):
    """Whatever a loader raises for a damaged file (zip, zlib, Arrow, astropy, numpy errors) as one
    `SpectrumRejected` naming the file; a `SpectrumRejected` passes through with its path."""
    try:
        yield
    except SpectrumRejected as exc:
        if not getattr(exc, "path", ""):
            exc.path = path
        raise
    except MemoryError:
        raise rejected(path, "too large", "not enough memory to read it (--max-input-mb caps the size)") from None
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib, pyarrow, astropy and numpy raise many types
        text = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise rejected(path, "unreadable", f"{type(exc).__name__}: {text}" if text else type(exc).__name__) from None


def _file_stem(path: str) -> str:
    """The file name without its format suffix (`star.fits.gz` -> `star`)."""
    name = Path(path).name
    suffixes = sorted((s for loader in LOADERS for s in loader.SUFFIXES), key=len, reverse=True)
    suffix = next((s for s in suffixes if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)]


_label = clean_number  # a label or coordinate, None where missing (NaN, text, -9999)


def _meta(path: str, index: int, scalars: dict, info: SourceInfo, medium: str, resolution: float | None) -> dict:
    lower = lower_map(scalars)
    meta: dict = {"data_release": info.data_release, "source_index": index, "wave_medium": medium}
    meta["resolution_matched"] = resolution
    for target, keys in {**LABEL_KEYS, **COORD_KEYS}.items():
        key = first(lower, keys)
        meta[target] = _label(scalars[key]) if key is not None else None
    for target, keys in CLASS_KEYS.items():
        key = first(lower, keys)
        value = scalars[key] if key is not None else None
        meta[target] = str(value).strip() or None if value is not None else None
    obsid = scalars.get(lower.get("obsid")) if "obsid" in lower else None
    try:
        meta["obsid"] = int(obsid) if obsid is not None and float(obsid) > 0 else None
    except (TypeError, ValueError):
        meta["obsid"] = None
    if info.miles and "miles_id" in lower:
        meta["miles_id"] = int(scalars[lower["miles_id"]])
        meta["spec_id"] = miles_spec_id(meta["miles_id"])
    else:
        key = first(lower, ID_KEYS)
        value = scalars[key] if key is not None else None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if value not in (None, ""):
            meta["spec_id"] = str(value).strip()
        elif info.n == 1:  # one spectrum per file: named by the file, as survey FITS files are
            meta["spec_id"] = _file_stem(path)
        else:
            meta["spec_id"] = f"{Path(path).name}{VIRTUAL_SEP}{index}"
    return meta


def _make(path: str, index: int, wave, flux, ivar, scalars: dict, info: SourceInfo, config: ArrayConfig):
    vpath = virtual_path(path, index)
    wave = np.asarray(wave, dtype=np.float64).ravel()
    flux = np.asarray(flux, dtype=np.float64).ravel()
    ivar = None if ivar is None else np.asarray(ivar, dtype=np.float64).ravel()
    if wave.shape != flux.shape or (ivar is not None and ivar.shape != flux.shape):
        return rejected(vpath, "bad shape", f"{wave.size} wavelengths for {flux.size} flux values")
    if wave.size < 10:
        return rejected(vpath, "bad shape", f"only {wave.size} pixels")
    if not np.all(np.isfinite(wave)):
        return rejected(vpath, "bad wavelength", "non-finite wavelengths")
    if info.loglam:
        wave = 10.0**wave
    step = np.diff(wave)
    if np.all(step < 0):
        wave, flux = wave[::-1], flux[::-1]
        ivar = None if ivar is None else ivar[::-1]
    elif not np.all(step > 0):
        return rejected(vpath, "bad wavelength", "wavelengths are not monotonic")
    if info.medium == "air":
        wave = air_to_vacuum(wave)
    resolution = None
    if info.fwhm and config.match_resolution:
        flux, ivar = broaden(wave, flux, ivar, info.fwhm, config.match_resolution, config.kernel_sigmas)
        resolution = config.match_resolution
    bad = ~np.isfinite(flux)
    ormask = None
    if bad.any():  # a missing pixel is a bad pixel, not a reason to drop the spectrum
        flux = np.where(bad, 0.0, flux)
        ormask = np.where(bad, BAD_PIXEL, 0).astype(np.int64)
        if ivar is not None:
            ivar = np.where(bad, 0.0, ivar)
    if ivar is not None:
        ivar = np.where(np.isfinite(ivar), ivar, 0.0)
    return RawSpectrum(
        path=vpath,
        layout=LAYOUT_ARRAY,
        wave=wave,
        flux=flux.astype(np.float32),
        ivar=None if ivar is None else ivar.astype(np.float32),
        ormask=ormask,
        meta=_meta(path, index, scalars, info, info.medium, resolution),
    )


def iter_array_spectra(
    path: str, config: ArrayConfig = ArrayConfig(), limits: ReadConfig = ReadConfig()
) -> Iterator[RawSpectrum | SpectrumRejected]:
    """Every spectrum of an array source, in order, one at a time.

    Yields a `RawSpectrum` (path `FILE#i`, layout 'array') per spectrum, or a `SpectrumRejected` (its `.path` the
    virtual path) for one whose arrays cannot be used: the caller reports it and goes on. A file that cannot be
    read at all raises `SpectrumRejected` (with `.path`) before the first item.
    """
    path = str(path)
    loader = _loader(path)
    if loader is None:
        raise rejected(path, "unknown layout", "not an npz, Parquet, CSV or FITS table of spectra")
    if not os.path.isfile(path):
        check_regular(path)  # names what it is (a FIFO, a device) or that it is missing
        raise rejected(path, "unreadable", "no such file")
    with _one_line(path):
        check_regular(path)
        info, columns, rows = loader.load(path, limits.max_bytes)
    try:
        i = 0
        while True:
            with _one_line(path):
                try:
                    wave, flux, ivar, scalars = next(rows)
                except StopIteration:
                    return
            try:
                scalars = {**columns.row(i), **scalars} if columns.values else scalars
                yield _make(path, i, wave, flux, ivar, scalars, info, config)
            except (ValueError, TypeError, IndexError, ArithmeticError) as exc:  # values no reader foresaw
                text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                yield rejected(virtual_path(path, i), "bad values", text)
            i += 1
    finally:
        rows.close()


# A forward-only cursor per process, so that reading `FILE#0`, `FILE#1`, ... one at a time (ingest's workers)
# decompresses the file once rather than once per spectrum.
_CURSOR: dict = {}


def read_array_row(path: str, config: ArrayConfig = ArrayConfig(), limits: ReadConfig = ReadConfig()) -> RawSpectrum:
    """One spectrum of an array source by its virtual path `FILE#i`; raises `SpectrumRejected` when unusable."""
    parts = split_virtual(path)
    if parts is None:
        raise rejected(path, "unreadable", "not a FILE#index path of an array source")
    base, index = parts
    key = (os.getpid(), os.path.abspath(base), config, limits)
    if _CURSOR.get("key") != key or _CURSOR["next"] > index:
        if _CURSOR.get("it") is not None:
            _CURSOR["it"].close()
        _CURSOR.update(key=key, next=0, it=iter_array_spectra(base, config, limits))
    try:
        while True:
            item = next(_CURSOR["it"])
            _CURSOR["next"] += 1
            if _CURSOR["next"] - 1 == index:
                break
    except StopIteration:
        _CURSOR.clear()
        raise rejected(path, "unreadable", f"{base} holds fewer than {index + 1} spectra") from None
    except SpectrumRejected as exc:  # the file itself is unreadable
        _CURSOR.clear()
        raise rejected(path, exc.reason, exc.detail) from None
    if isinstance(item, SpectrumRejected):
        raise item
    return item
