"""Catalogue tables (CSV, FITS or Parquet) read into pyarrow, whatever the survey."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import SpecllmError

# Survey placeholders for a missing value (LAMOST -9999, APOGEE -9999.99).
PLACEHOLDER_MAX = -9999.0


FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz", ".fts")
PARQUET_SUFFIXES = (".parquet", ".pq")


def _kind(path: str) -> str:
    lower = path.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(FITS_SUFFIXES):
        return "fits"
    return "csv"


def _unreadable(path: str, exc: Exception) -> SpecllmError:
    text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return SpecllmError(f"{path}: unreadable catalogue ({text})")


def read_catalog(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read a CSV, FITS (first table HDU) or Parquet catalogue. Column names keep their case.

    `columns` (exact names, as `catalog_columns` gives them) reads only those: a 4 GB allStar file is then read
    column by column from a memory map, never whole.
    """
    if not os.path.exists(path):
        raise SpecllmError(f"{path}: no such catalogue")
    try:
        kind = _kind(path)
        if kind == "parquet":
            return pq.read_table(path, columns=columns)
        if kind == "fits":
            return _read_fits_table(path, columns)
        options = pacsv.ConvertOptions(include_columns=columns) if columns is not None else None
        return pacsv.read_csv(path, convert_options=options)
    except SpecllmError:
        raise
    except Exception as exc:  # pyarrow and astropy raise many types for unreadable files
        raise _unreadable(path, exc) from None


def catalog_columns(path: str) -> list[str]:
    """The column names of a catalogue, read from its header or schema only (FITS vector columns included)."""
    if not os.path.exists(path):
        raise SpecllmError(f"{path}: no such catalogue")
    try:
        kind = _kind(path)
        if kind == "parquet":
            return list(pq.read_schema(path).names)
        if kind == "fits":
            from astropy.io import fits

            with fits.open(path) as hdul:
                hdu = _first_table_hdu(hdul)
                return list(hdu.columns.names)
        with pacsv.open_csv(path) as reader:
            return list(reader.schema.names)
    except SpecllmError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from None


def _first_table_hdu(hdul):
    from astropy.io import fits

    for hdu in hdul:
        if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            return hdu
    raise SpecllmError(f"{hdul.filename()}: no table HDU")


def _read_fits_table(path: str, columns: list[str] | None = None) -> pa.Table:
    from astropy.io import fits
    from astropy.table import Table
    from astropy.utils.exceptions import AstropyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        with fits.open(path, memmap=not path.lower().endswith(".gz")) as hdul:
            hdu = _first_table_hdu(hdul)
            if columns is not None:
                hdu = fits.BinTableHDU.from_columns([hdu.columns[name] for name in columns], header=None)
                hdu.data  # noqa: B018 - materialise the selected columns before the file closes
            table = Table.read(hdu, character_as_bytes=False)
            result = {}  # converted while the (memory-mapped) file is open
            for name in table.colnames:
                col = table[name]
                if col.ndim > 1:
                    continue  # vector columns (spectra, covariances) are not labels
                values = np.asarray(col)
                if values.dtype.kind in "SU":
                    values = np.char.strip(values.astype(str))
                elif values.dtype.byteorder not in ("=", "|"):
                    values = values.astype(values.dtype.newbyteorder("="))  # FITS is big-endian; Arrow wants native
                mask = np.asarray(col.mask) if hasattr(col, "mask") and np.any(col.mask) else None
                result[name] = pa.array(values, mask=mask)
    return pa.table(result)


def column_as_float(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with nulls, NaN and survey placeholders (<= -9999) as NaN."""
    col = table.column(name)
    values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    values = np.where(np.isfinite(values) & (values > PLACEHOLDER_MAX), values, np.nan)
    return values
