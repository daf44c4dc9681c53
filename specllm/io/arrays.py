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
(ormask bit), and a stated resolution broadened to LAMOST's R~1800 (`ArrayConfig.match_resolution`).

Rows are streamed one at a time (npz members are decompressed row by row, Parquet read in batches, FITS
memory-mapped), so memory stays bounded whatever the number of spectra.
"""

from __future__ import annotations

import itertools
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import ArrayConfig
from ..errors import SpectrumRejected
from ..labels import clean_number
from .base import RawSpectrum
from .tables import CSV_SUFFIXES, NPZ_SUFFIXES, PARQUET_SUFFIXES, ColumnNames, is_fits

LAYOUT_ARRAY = "array"
VIRTUAL_SEP = "#"

WAVE_KEYS = ("wave", "wavelength", "wavelengths", "lambda", "lam", "loglam")
FLUX_KEYS = ("flux", "spectra", "spectrum", "specificintensity")
IVAR_KEYS = ("ivar", "inverse_variance")
ERROR_KEYS = ("error", "err", "flux_err", "sigma", "uncertainty")
ID_KEYS = ("spec_id", "obsid", "miles_id", "id", "name", "designation", "object")
LABEL_KEYS = {
    "teff": ("teff",),
    "logg": ("logg",),
    "feh": ("feh", "fe_h", "m_h", "mh"),
    "teff_err": ("teff_err", "e_teff"),
    "logg_err": ("logg_err", "e_logg"),
    "feh_err": ("feh_err", "e_feh", "e_fe_h"),
}
COORD_KEYS = {"ra": ("ra",), "dec": ("dec",)}
CLASS_KEYS = {"subclass": ("subclass", "sptype", "spt"), "objclass": ("class",)}
# FITS header keywords describing a single spectrum (BOSZ synthetic spectra: T_EFF, LOGG, MH).
HEADER_KEYS = {
    "teff": ("TEFF", "T_EFF"),
    "logg": ("LOGG",),
    "feh": ("FEH", "FE_H", "MH", "M_H"),
    "ra": ("RA",),
    "dec": ("DEC",),
}
MEDIUM_KEYS = ("medium", "wave_medium", "airorvac")
FWHM_KEYS = ("fwhm_angstrom", "fwhm")
MILES_FWHM = 2.5  # A, the MILES library's resolution (Falcon-Barroso et al. 2011)
BAD_PIXEL = 1  # ormask bit set by this reader for non-finite flux


def miles_spec_id(miles_id: int) -> str:
    """The spec_id of a MILES star: `miles-0272` for MILES number 272 (`s0272` in the MILES tables)."""
    return f"miles-{int(miles_id):04d}"


def virtual_path(path: str, index: int) -> str:
    return f"{path}{VIRTUAL_SEP}{index}"


def split_virtual(path: str) -> tuple[str, int] | None:
    """`table.npz#12` -> ('table.npz', 12); None for an ordinary path."""
    base, sep, tail = str(path).rpartition(VIRTUAL_SEP)
    if not sep or not tail.isdigit() or not os.path.isfile(base):
        return None
    return base, int(tail)


def _rejected(path: str, reason: str, detail: str) -> SpectrumRejected:
    exc = SpectrumRejected(reason, detail)
    exc.path = path
    return exc


_lower_map = ColumnNames  # case-insensitive column lookup (io/tables.py)


def _first(lower: ColumnNames, keys) -> str | None:
    return lower.first(keys)


# ---------------------------------------------------------------- wavelength and resolution conventions


def air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    """Air -> vacuum wavelengths in Angstrom (VALD3 / Piskunov formula, as used by SDSS and MILES users)."""
    wave_air = np.asarray(wave_air, dtype=np.float64)
    s2 = (1e4 / wave_air) ** 2
    n = (
        1.0
        + 0.00008336624212083
        + 0.02408926869968 / (130.1065924522 - s2)
        + 0.0001599740894897 / (38.92568793293 - s2)
    )
    return wave_air * n


def broaden(
    wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray | None, fwhm_in: float, resolution: float, sigmas: float
):
    """Gaussian broadening from a constant FWHM (A) to resolving power `resolution`, where the source is sharper.

    The kernel width varies with wavelength (sigma^2 = (lambda / R)^2 - fwhm_in^2, over 2 sqrt(2 ln 2)); where the
    source is already broader it is left as it is. Non-finite flux carries no weight. Returns (flux, ivar).
    """
    dpix = np.gradient(wave)
    extra = (wave / resolution) ** 2 - fwhm_in**2
    sigma_pix = np.sqrt(np.clip(extra, 0.0, None)) / (2.0 * np.sqrt(2.0 * np.log(2.0))) / dpix
    if not np.any(sigma_pix > 0.1):
        return flux, ivar
    half = int(np.ceil(sigmas * sigma_pix.max()))
    offsets = np.arange(-half, half + 1)
    finite = np.isfinite(flux)
    flux0 = np.where(finite, flux, 0.0)
    var = None
    if ivar is not None:
        var = np.where(ivar > 0, 1.0 / np.where(ivar > 0, ivar, 1.0), np.inf)
    out = np.empty_like(flux0)
    out_ivar = None if ivar is None else np.empty_like(flux0)
    block = max(1, 2_000_000 // offsets.size)  # bounded memory for long, finely sampled spectra
    for start in range(0, wave.size, block):
        rows = np.arange(start, min(start + block, wave.size))
        index = np.clip(rows[:, None] + offsets[None, :], 0, wave.size - 1)
        sig = np.maximum(sigma_pix[rows, None], 1e-6)
        w = np.exp(-0.5 * (offsets[None, :] / sig) ** 2) * finite[index]
        total = w.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[rows] = (w * flux0[index]).sum(axis=1) / total
            if var is not None:
                out_var = (w**2 * var[index]).sum(axis=1) / total**2
                out_ivar[rows] = np.where(np.isfinite(out_var) & (out_var > 0), 1.0 / out_var, 0.0)
    out[~finite] = np.nan  # a missing pixel stays missing
    return out, out_ivar


# ---------------------------------------------------------------- sources


@dataclass
class _Info:
    """What a source says about all its spectra."""

    medium: str = "vacuum"
    fwhm: float | None = None
    loglam: bool = False
    data_release: str | None = None
    miles: bool = False
    n: int = 0


@dataclass
class _Columns:
    """The per-spectrum scalar columns of a source (ids, coordinates, labels), lower-case name -> values."""

    values: dict[str, np.ndarray] = field(default_factory=dict)

    def row(self, i: int) -> dict:
        return {k: v[i] for k, v in self.values.items()}


_is_fits = is_fits


def _format(path: str) -> str | None:
    lower = path.lower()
    if lower.endswith(NPZ_SUFFIXES):
        return "npz"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    if _is_fits(lower):
        return "fits"
    return None


def _medium_of(value) -> str:
    text = str(value.item() if isinstance(value, np.ndarray) else value).strip().lower()
    if isinstance(value, (bool, np.bool_)):
        return "air" if value else "vacuum"
    return "air" if text.startswith("air") else "vacuum"


# npz ------------------------------------------------------------------------------------


def _npy_header(fh):
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        return None
    if dtype.hasobject:
        raise _rejected("", "unreadable", "object arrays in the npz (pickled data is never loaded)")
    return shape, fortran, dtype


def _npz_member(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    with zf.open(name) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _npz_rows(zf: zipfile.ZipFile, name: str) -> Iterator[np.ndarray]:
    """The rows of a 2-D member, decompressed one at a time (the whole array only where it is Fortran-ordered)."""
    with zf.open(name) as fh:
        header = _npy_header(fh)
        if header is not None and not header[1] and len(header[0]) == 2:
            (n, m), _, dtype = header
            size = m * dtype.itemsize
            for _ in range(n):
                buf = fh.read(size)
                if len(buf) < size:
                    raise _rejected("", "unreadable", f"{name} is truncated")
                yield np.frombuffer(buf, dtype=dtype)
            return
    yield from _npz_member(zf, name)


def _npz_shape(zf: zipfile.ZipFile, name: str) -> tuple:
    with zf.open(name) as fh:
        header = _npy_header(fh)
    return header[0] if header is not None else _npz_member(zf, name).shape


def _npz_open(path: str) -> tuple[zipfile.ZipFile, dict[str, str], str, str, tuple]:
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise _rejected(path, "unreadable", f"not a readable npz file ({exc})") from None
    members = _lower_map(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
    flux_key, wave_key = _first(members, FLUX_KEYS), _first(members, WAVE_KEYS)
    if flux_key is None or wave_key is None:
        zf.close()
        missing = "flux" if flux_key is None else "wave"
        raise _rejected(path, "missing column", f"the npz has no '{missing}' array (has: {', '.join(members)})")
    shape = _npz_shape(zf, flux_key + ".npy")
    if len(shape) not in (1, 2):
        zf.close()
        raise _rejected(path, "bad shape", f"flux has shape {shape}; expected (pixels,) or (spectra, pixels)")
    return zf, members, flux_key, wave_key, shape


def _npz_source(path: str) -> tuple[_Info, _Columns, Iterator]:
    zf, members, flux_key, wave_key, shape = _npz_open(path)
    n = 1 if len(shape) == 1 else shape[0]
    info = _Info(n=n, loglam=wave_key.lower() == "loglam", miles="miles_id" in members)
    columns = _Columns()
    skip = {flux_key, wave_key}
    ivar_key = _first(members, IVAR_KEYS)
    err_key = None if ivar_key else _first(members, ERROR_KEYS)
    skip |= {ivar_key, err_key}
    for low, name in members.items():
        if name in skip:
            continue
        if low in MEDIUM_KEYS or low in FWHM_KEYS:
            value = _npz_member(zf, name + ".npy")
            if value.size == 1:
                if low in MEDIUM_KEYS:
                    info.medium = _medium_of(value.reshape(()))
                else:
                    info.fwhm = float(value.reshape(()))
            continue
        member_shape = _npz_shape(zf, name + ".npy")
        if member_shape == (n,) or (n == 1 and member_shape == ()):
            columns.values[low] = _npz_member(zf, name + ".npy").reshape(n)
    if info.miles:
        info.data_release = "MILES"
        if "medium" not in members:
            info.medium = "air"
        if info.fwhm is None:
            info.fwhm = MILES_FWHM

    def rows():
        try:
            wave_shape = _npz_shape(zf, wave_key + ".npy")
            shared = _npz_member(zf, wave_key + ".npy") if len(wave_shape) == 1 else None
            noise_key = ivar_key or err_key
            if len(shape) == 1:
                wave = shared if shared is not None else _npz_member(zf, wave_key + ".npy").ravel()
                noise = _npz_member(zf, noise_key + ".npy").ravel() if noise_key else None
                yield wave, _npz_member(zf, flux_key + ".npy"), _noise_to_ivar(noise, bool(err_key)), {}
                return
            waves = itertools.repeat(shared) if shared is not None else _npz_rows(zf, wave_key + ".npy")
            noises = _npz_rows(zf, noise_key + ".npy") if noise_key else itertools.repeat(None)
            for wave, flux, noise in zip(waves, _npz_rows(zf, flux_key + ".npy"), noises, strict=False):
                yield wave, flux, _noise_to_ivar(noise, bool(err_key)), {}
        finally:
            zf.close()

    return info, columns, rows()


def _noise_to_ivar(noise: np.ndarray | None, is_error: bool) -> np.ndarray | None:
    if noise is None:
        return None
    noise = np.asarray(noise, dtype=np.float64)
    if not is_error:
        return noise
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(noise) & (noise > 0), 1.0 / noise**2, 0.0)


# tables (Parquet, CSV, FITS) ------------------------------------------------------------


@dataclass
class _TableLayout:
    wave: str
    flux: str
    noise: str | None
    is_error: bool
    id_column: str | None
    scalars: list[str]
    wide: bool


def _table_layout(path: str, names: list[str], is_list) -> _TableLayout:
    lower = _lower_map(names)
    wave, flux = _first(lower, WAVE_KEYS), _first(lower, FLUX_KEYS)
    if wave is None or flux is None:
        missing = "flux" if flux is None else "wave"
        raise _rejected(path, "missing column", f"no '{missing}' column (has: {', '.join(names[:20])})")
    ivar = _first(lower, IVAR_KEYS)
    err = None if ivar else _first(lower, ERROR_KEYS)
    wide = is_list(flux)
    if is_list(wave) != wide:
        raise _rejected(path, "bad shape", "'wave' and 'flux' must both be array columns or both scalar columns")
    used = {wave, flux, ivar, err}
    scalars = [n for n in names if n not in used and not is_list(n)]
    id_column = None if wide else _first(_lower_map(scalars), ID_KEYS)
    return _TableLayout(wave, flux, ivar or err, bool(err), id_column, scalars, wide)


def _long_groups(batches, layout: _TableLayout, path: str, extra: dict | None = None) -> Iterator[tuple]:
    """Long tables: consecutive rows with the same id form one spectrum (the whole table when there is no id)."""
    current, parts, seen = None, [], set()

    def emit():
        wave = np.concatenate([p[0] for p in parts])
        flux = np.concatenate([p[1] for p in parts])
        noise = np.concatenate([p[2] for p in parts]) if layout.noise else None
        return wave, flux, _noise_to_ivar(noise, layout.is_error), parts[0][3]

    for batch in batches:
        cols = {n: np.asarray(batch[n]) for n in [layout.wave, layout.flux, *([layout.noise] if layout.noise else [])]}
        ids = np.asarray(batch[layout.id_column]) if layout.id_column else np.zeros(len(cols[layout.flux]), dtype=int)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], dtype=int)
        bounds = list(zip(starts, [*starts[1:], len(ids)], strict=True))
        for a, b in bounds:
            key = ids[a].item() if hasattr(ids[a], "item") else ids[a]
            if parts and key != current:
                yield emit()
                parts = []
            if not parts:
                if key in seen:
                    raise _rejected(path, "bad layout", f"rows of id {key!r} are not contiguous in the table")
                seen.add(key)
                current = key
            scalars = {**(extra or {}), **{n.lower(): _scalar(batch[n][a]) for n in layout.scalars}}
            parts.append(
                (
                    cols[layout.wave][a:b],
                    cols[layout.flux][a:b],
                    cols[layout.noise][a:b] if layout.noise else None,
                    scalars,
                )
            )
    if parts:
        yield emit()


def _scalar(value):
    if hasattr(value, "as_py"):
        return value.as_py()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _parquet_source(path: str) -> tuple[_Info, _Columns, Iterator]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise _rejected(path, "unreadable", f"not a readable Parquet file ({str(exc).splitlines()[0][:120]})") from None
    schema = pf.schema_arrow

    def is_list(name: str) -> bool:
        t = schema.field(name).type
        return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)

    layout = _table_layout(path, schema.names, is_list)
    info = _Info(loglam=layout.wave.lower() == "loglam")
    meta = {k.decode().lower(): v.decode() for k, v in (schema.metadata or {}).items()}
    info.medium = _medium_of(next((meta[k] for k in MEDIUM_KEYS if k in meta), "vacuum"))
    fwhm = next((meta[k] for k in FWHM_KEYS if k in meta), None)
    info.fwhm = float(fwhm) if fwhm is not None else None
    if layout.wide:
        info.n = pf.metadata.num_rows
        scalars = pf.read(columns=layout.scalars) if layout.scalars else None
        columns = _Columns({n.lower(): scalars.column(n).to_numpy(zero_copy_only=False) for n in layout.scalars})

        def rows():
            wanted = [layout.wave, layout.flux, *([layout.noise] if layout.noise else [])]
            for batch in pf.iter_batches(batch_size=64, columns=wanted):
                for j in range(batch.num_rows):
                    wave = _list_value(batch.column(layout.wave)[j])
                    flux = _list_value(batch.column(layout.flux)[j])
                    noise = _list_value(batch.column(layout.noise)[j]) if layout.noise else None
                    yield wave, flux, _noise_to_ivar(noise, layout.is_error), {}

        return info, columns, rows()
    info.n = (
        _count_long(pf.read(columns=[layout.id_column]).column(0).to_numpy(zero_copy_only=False))
        if layout.id_column
        else 1
    )
    batches = (_batch_arrays(b) for b in pf.iter_batches(batch_size=65536))
    return info, _Columns(), _long_groups(batches, layout, path)


def _batch_arrays(batch) -> dict[str, np.ndarray]:
    return {name: batch.column(k).to_numpy(zero_copy_only=False) for k, name in enumerate(batch.schema.names)}


def _list_value(scalar) -> np.ndarray:
    if not scalar.is_valid:
        return np.array([], dtype=np.float64)
    return np.asarray(scalar.values.to_numpy(zero_copy_only=False), dtype=np.float64)


def _count_long(ids: np.ndarray) -> int:
    return int(np.count_nonzero(np.r_[True, ids[1:] != ids[:-1]])) if len(ids) else 0


def _csv_source(path: str) -> tuple[_Info, _Columns, Iterator]:
    import pyarrow.csv as pacsv

    try:
        reader = pacsv.open_csv(path)
    except Exception as exc:  # pyarrow's CSV errors come in several types
        raise _rejected(path, "unreadable", f"not a readable CSV table ({str(exc).splitlines()[0][:120]})") from None
    layout = _table_layout(path, reader.schema.names, lambda n: False)
    info = _Info(loglam=layout.wave.lower() == "loglam")
    if layout.id_column:
        ids = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=[layout.id_column])).column(0)
        info.n = _count_long(ids.to_numpy(zero_copy_only=False))
    else:
        info.n = 1
    batches = (_batch_arrays(b) for b in reader)
    return info, _Columns(), _long_groups(batches, layout, path)


def _survey_primary(primary) -> bool:
    """True when a primary header (astropy Header or dict) belongs to a survey spectrum, not to an array table."""
    if primary.get("NAXIS", 0) != 0:
        return True  # LAMOST DR1-DR8 images and other image spectra: read_spectrum's job
    telescope = str(primary.get("TELESCOP", "")).upper()
    return telescope.startswith(("LAMOST", "SDSS")) or "OBSID" in primary or "DATA_V" in primary


def _primary_header(path: str, max_blocks: int = 36) -> dict | None:
    """The primary header of a FITS file (gzip or plain) from its first blocks only (~0.05 ms, where opening the
    file with astropy costs ~0.7 ms), or None where the fast card parser cannot tell (astropy then decides)."""
    import gzip

    from .fitsfile import BLOCK, FastPathUnsupported, _card_value

    end_card = b"END" + b" " * 77
    wanted = (b"NAXIS   ", b"TELESCOP", b"OBSID   ", b"DATA_V  ")

    def parse(cards: bytes) -> dict:  # only the keywords `_survey_primary` reads
        return {
            cards[i : i + 8].decode().strip(): _card_value(cards[i + 10 : i + 80].decode("ascii"))
            for i in range(0, len(cards), 80)
            if cards[i : i + 8] in wanted and cards[i + 8 : i + 10] == b"= "
        }

    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as fh:
            data = b""
            for _ in range(max_blocks):
                block = fh.read(BLOCK)
                if len(block) < BLOCK:
                    return None
                data += block
                for i in range(len(data) - BLOCK, len(data), 80):
                    if data[i : i + 80] == end_card:
                        return parse(data[:i])
    except (OSError, EOFError, ValueError, UnicodeDecodeError, FastPathUnsupported):
        return None
    return None


def _fits_table_hdu(hdul) -> int | None:
    """The index of the first table HDU with wave and flux columns, in a file that is not a survey spectrum."""
    if _survey_primary(hdul[0].header):
        return None  # LAMOST and SDSS files are survey spectra
    for k, hdu in enumerate(hdul[1:], start=1):
        if hdu.header.get("XTENSION", "").strip() not in ("BINTABLE", "TABLE"):
            continue
        names = _lower_map(hdu.columns.names)
        if _first(names, WAVE_KEYS) and _first(names, FLUX_KEYS):
            return k
    return None


def _fits_source(path: str) -> tuple[_Info, _Columns, Iterator]:
    import warnings

    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            hdul = fits.open(path, memmap=True)
            k = _fits_table_hdu(hdul)
    except (OSError, ValueError, EOFError) as exc:
        raise _rejected(path, "unreadable", f"not a readable FITS file ({str(exc).splitlines()[0][:120]})") from None
    if k is None:
        hdul.close()
        raise _rejected(path, "missing column", "no FITS table with wave and flux columns")
    hdu = hdul[k]
    data = hdu.data
    dims = {n: data[n].ndim for n in hdu.columns.names}
    layout = _table_layout(path, list(hdu.columns.names), lambda n: dims[n] > 1)
    info = _Info(loglam=layout.wave.lower() == "loglam")
    for header in (hdu.header, hdul[0].header):
        medium = header.get("AIRORVAC") or header.get("WAVE_MEDIUM")
        if medium is not None:
            info.medium = _medium_of(medium)
            break
        if "VACUUM" in header:
            info.medium = "vacuum" if header["VACUUM"] else "air"
            break
    fwhm = hdu.header.get("FWHM", hdul[0].header.get("FWHM"))
    info.fwhm = float(fwhm) if fwhm is not None else None
    if layout.wide:
        info.n = len(data)
        columns = _Columns({n.lower(): _native(np.asarray(data[n])) for n in layout.scalars})

        def rows():
            try:
                for j in range(len(data)):
                    noise = np.asarray(data[layout.noise][j], dtype=np.float64) if layout.noise else None
                    yield (
                        np.asarray(data[layout.wave][j], dtype=np.float64),
                        np.asarray(data[layout.flux][j], dtype=np.float64),
                        _noise_to_ivar(noise, layout.is_error),
                        {},
                    )
            finally:
                hdul.close()

        return info, columns, rows()
    ids = _native(np.asarray(data[layout.id_column])) if layout.id_column else None
    info.n = _count_long(ids) if ids is not None else 1
    batch = {n: _native(np.asarray(data[n])) for n in hdu.columns.names}
    extra = {}
    if ids is None:  # one spectrum: its header may describe it
        for target, keys in HEADER_KEYS.items():
            for header in (hdu.header, hdul[0].header):
                key = next((k for k in keys if k in header), None)
                if key is not None:
                    extra[target] = header[key]
                    break
    hdul.close()
    return info, _Columns(), _long_groups([batch], layout, path, extra)


def _native(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "SU":
        return np.char.strip(values.astype(str))
    return values.astype(values.dtype.newbyteorder("="))


_SOURCES = {"npz": _npz_source, "parquet": _parquet_source, "csv": _csv_source, "fits": _fits_source}


# ---------------------------------------------------------------- public API


def is_array_source(path: str) -> bool:
    """True for a file of spectra given as arrays (npz, wave/flux table); False for survey FITS and anything else.

    Cheap: an npz by name, a table by its column names (Parquet footer, CSV header line, FITS headers).
    """
    path = str(path)
    kind = _format(path)
    if kind is None or not os.path.isfile(path):
        return False
    try:
        if kind == "npz":
            return True
        if kind == "parquet":
            import pyarrow.parquet as pq

            names = _lower_map(pq.read_schema(path).names)
        elif kind == "csv":
            import pyarrow.csv as pacsv

            names = _lower_map(pacsv.open_csv(path).schema.names)
        else:
            import warnings

            from astropy.io import fits

            primary = _primary_header(path)
            if primary is not None and _survey_primary(primary):
                return False  # a survey spectrum, told by its primary header alone (the common case: cheap)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(path, memmap=True) as hdul:
                    return _fits_table_hdu(hdul) is not None
    except Exception:  # unreadable files are not array sources; the FITS reader gives the reason
        return False
    return _first(names, WAVE_KEYS) is not None and _first(names, FLUX_KEYS) is not None


def array_count(path: str) -> int:
    """The number of spectra in an array source (read from headers where the format allows)."""
    kind = _format(path)
    if kind == "npz":
        zf, _, _, _, shape = _npz_open(path)
        zf.close()
        return 1 if len(shape) == 1 else int(shape[0])
    info, _, rows = _SOURCES[kind](path)
    rows.close()
    return info.n


_label = clean_number


def _meta(path: str, index: int, scalars: dict, info: _Info, medium: str, resolution: float | None) -> dict:
    lower = _lower_map(scalars)
    meta: dict = {"data_release": info.data_release, "source_index": index, "wave_medium": medium}
    meta["resolution_matched"] = resolution
    for target, keys in {**LABEL_KEYS, **COORD_KEYS}.items():
        key = _first(lower, keys)
        meta[target] = _label(scalars[key]) if key is not None else None
    for target, keys in CLASS_KEYS.items():
        key = _first(lower, keys)
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
        key = _first(lower, ID_KEYS)
        value = scalars[key] if key is not None else None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if value not in (None, ""):
            meta["spec_id"] = str(value).strip()
        elif info.n == 1:  # one spectrum per file: named by the file, as survey FITS files are
            meta["spec_id"] = re.sub(
                r"\.(npz|parquet|pq|csv(\.gz)?|fits?(\.gz)?|fts(\.gz)?)$", "", Path(path).name, flags=re.I
            )
        else:
            meta["spec_id"] = f"{Path(path).name}{VIRTUAL_SEP}{index}"
    return meta


def _make(path: str, index: int, wave, flux, ivar, scalars: dict, info: _Info, config: ArrayConfig):
    vpath = virtual_path(path, index)
    wave = np.asarray(wave, dtype=np.float64).ravel()
    flux = np.asarray(flux, dtype=np.float64).ravel()
    ivar = None if ivar is None else np.asarray(ivar, dtype=np.float64).ravel()
    if wave.shape != flux.shape or (ivar is not None and ivar.shape != flux.shape):
        return _rejected(vpath, "bad shape", f"{wave.size} wavelengths for {flux.size} flux values")
    if wave.size < 10:
        return _rejected(vpath, "bad shape", f"only {wave.size} pixels")
    if not np.all(np.isfinite(wave)):
        return _rejected(vpath, "bad wavelength", "non-finite wavelengths")
    if info.loglam:
        wave = 10.0**wave
    step = np.diff(wave)
    if np.all(step < 0):
        wave, flux = wave[::-1], flux[::-1]
        ivar = None if ivar is None else ivar[::-1]
    elif not np.all(step > 0):
        return _rejected(vpath, "bad wavelength", "wavelengths are not monotonic")
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


def iter_array_spectra(path: str, config: ArrayConfig = ArrayConfig()) -> Iterator[RawSpectrum | SpectrumRejected]:
    """Every spectrum of an array source, in order, one at a time.

    Yields a `RawSpectrum` (path `FILE#i`, layout 'array') per spectrum, or a `SpectrumRejected` (its `.path` the
    virtual path) for one whose arrays cannot be used: the caller reports it and goes on. A file that cannot be
    read at all raises `SpectrumRejected` (with `.path`) before the first item.
    """
    path = str(path)
    kind = _format(path)
    if kind is None:
        raise _rejected(path, "unknown layout", "not an npz, Parquet, CSV or FITS table of spectra")
    if not os.path.isfile(path):
        raise _rejected(path, "unreadable", "no such file")
    info, columns, rows = _SOURCES[kind](path)
    try:
        for i, item in enumerate(rows):
            wave, flux, ivar, scalars = item
            yield _make(
                path, i, wave, flux, ivar, {**columns.row(i), **scalars} if columns.values else scalars, info, config
            )
    except SpectrumRejected as exc:
        if not getattr(exc, "path", ""):
            exc.path = path
        raise
    finally:
        rows.close()


# A forward-only cursor per process, so that reading `FILE#0`, `FILE#1`, ... one at a time (ingest's workers)
# decompresses the file once rather than once per spectrum.
_CURSOR: dict = {}


def read_array_row(path: str, config: ArrayConfig = ArrayConfig()) -> RawSpectrum:
    """One spectrum of an array source by its virtual path `FILE#i`; raises `SpectrumRejected` when unusable."""
    parts = split_virtual(path)
    if parts is None:
        raise _rejected(path, "unreadable", "not a FILE#index path of an array source")
    base, index = parts
    key = (os.getpid(), os.path.abspath(base), config)
    if _CURSOR.get("key") != key or _CURSOR["next"] > index:
        if _CURSOR.get("it") is not None:
            _CURSOR["it"].close()
        _CURSOR.update(key=key, next=0, it=iter_array_spectra(base, config))
    try:
        while True:
            item = next(_CURSOR["it"])
            _CURSOR["next"] += 1
            if _CURSOR["next"] - 1 == index:
                break
    except StopIteration:
        _CURSOR.clear()
        raise _rejected(path, "unreadable", f"{base} holds fewer than {index + 1} spectra") from None
    except SpectrumRejected as exc:  # the file itself is unreadable
        _CURSOR.clear()
        raise _rejected(path, exc.reason, exc.detail) from None
    if isinstance(item, SpectrumRejected):
        raise item
    return item
