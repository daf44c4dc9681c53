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


def read_catalog(path: str) -> pa.Table:
    """Read a CSV, FITS (first table HDU) or Parquet catalogue. Column names keep their case."""
    if not os.path.exists(path):
        raise SpecllmError(f"{path}: no such catalogue")
    lower = path.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            return pq.read_table(path)
        if lower.endswith((".fits", ".fits.gz", ".fit", ".fit.gz", ".fts")):
            return _read_fits_table(path)
        return pacsv.read_csv(path)
    except SpecllmError:
        raise
    except Exception as exc:  # pyarrow and astropy raise many types for unreadable files
        raise SpecllmError(f"{path}: unreadable catalogue ({str(exc).splitlines()[0][:160]})") from None


def _read_fits_table(path: str) -> pa.Table:
    from astropy.table import Table
    from astropy.utils.exceptions import AstropyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        table = Table.read(path, format="fits", character_as_bytes=False)
    columns = {}
    for name in table.colnames:
        col = table[name]
        if col.ndim > 1:
            continue  # vector columns (spectra, covariances) are not labels
        values = np.asarray(col)
        if hasattr(col, "mask") and np.any(col.mask):
            columns[name] = pa.array(values, mask=np.asarray(col.mask))
        elif values.dtype.kind in "SU":
            columns[name] = pa.array(np.char.strip(values.astype(str)))
        else:
            columns[name] = pa.array(values.astype(values.dtype.newbyteorder("=")))
    return pa.table(columns)


def column_as_float(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with nulls, NaN and survey placeholders (<= -9999) as NaN."""
    col = table.column(name)
    values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    values = np.where(np.isfinite(values) & (values > PLACEHOLDER_MAX), values, np.nan)
    return values
