"""Catalogue tables read into pyarrow, whatever the survey: the one home for table formats and column lookup.

- Formats by file name: CSV (`.csv`, `.csv.gz`, or any other name), FITS (`FITS_SUFFIXES`, first table HDU),
  Parquet (`PARQUET_SUFFIXES`) and, for `read_table`, an npz of 1-D arrays (the MILES labels).
- Column names are looked up case-insensitively (`ColumnNames`: the first spelling of a name wins).
- Numbers are read by one function, `float_column`: null, NaN, inf and survey placeholders (<= -9999) become NaN.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import SpecllmError, SpectrumRejected, one_line
from ..labels import as_float
from .base import FITS_SUFFIXES, NPZ_SUFFIXES, PARQUET_SUFFIXES, check_regular


def is_fits(path: str) -> bool:
    return str(path).lower().endswith(FITS_SUFFIXES)


def fits_stem(name: str) -> str:
    """`spec-55862-B6212_sp06-003.fits.gz` -> `spec-55862-B6212_sp06-003` (any FITS suffix, any case)."""
    lower = name.lower()
    suffix = next((s for s in sorted(FITS_SUFFIXES, key=len, reverse=True) if lower.endswith(s)), "")
    return name[: len(name) - len(suffix)]


def _kind(path: str) -> str:
    lower = path.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(FITS_SUFFIXES):
        return "fits"
    if lower.endswith(NPZ_SUFFIXES):
        return "npz"
    return "csv"


class ColumnNames(dict):
    """Case-insensitive column lookup: lower-cased, stripped name -> the name as the table spells it (the first
    spelling wins where two differ only in case)."""

    def __init__(self, names=()):
        super().__init__()
        for name in names:
            self.setdefault(str(name).strip().lower(), name)

    def find(self, name: str) -> str | None:
        """The table's spelling of `name`, None if absent."""
        return self.get(str(name).strip().lower())

    def first(self, candidates) -> str | None:
        """The table's spelling of the first of `candidates` present, None if none is."""
        return next((found for c in candidates if (found := self.find(c)) is not None), None)


def _unreadable(path: str, exc: Exception) -> SpecllmError:
    text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return SpecllmError(f"{path}: unreadable catalogue ({text})")


def _check_catalogue(path: str) -> None:
    """One line for a catalogue that is missing or is not a regular file (a FIFO or device is never opened)."""
    if not os.path.exists(path):
        raise SpecllmError(f"{path}: no such catalogue")
    try:
        check_regular(path)
    except SpectrumRejected as exc:
        raise SpecllmError(f"{one_line(path)}: unreadable catalogue ({exc.reason}: {exc.detail})") from None


def _unique_names(path: str, names: list[str]) -> list[str]:
    """`names`, or one line naming a column that appears twice (which of the two would be read is ambiguous)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SpecllmError(f"{one_line(path)}: column {one_line(name)!r} appears more than once")
        seen.add(name)
    return names


def read_catalog(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read a CSV, FITS (first table HDU), Parquet or npz (1-D arrays) catalogue. Column names keep their case.

    `columns` (exact names, as `catalog_columns` gives them) reads only those: a 4 GB allStar file is then read
    column by column from a memory map, never whole.
    """
    _check_catalogue(path)
    try:
        kind = _kind(path)
        if kind == "npz":
            table = _read_npz_table(path)
            return table.select(columns) if columns is not None else table
        if kind == "parquet":
            table = pq.read_table(path, columns=columns)
            _unique_names(path, table.column_names)
            return text_columns(table)
        if kind == "fits":
            return _read_fits_table(path, columns)
        options = pacsv.ConvertOptions(include_columns=columns) if columns is not None else None
        table = pacsv.read_csv(path, convert_options=options)
        _unique_names(path, table.column_names)
        return text_columns(table)
    except SpecllmError:
        raise
    except Exception as exc:  # pyarrow and astropy raise many types for unreadable files
        raise _unreadable(path, exc) from None


def text_columns(table: pa.Table) -> pa.Table:
    """Binary columns as text: UTF-8 where they are, else Latin-1 (a catalogue exported by another tool; pyarrow
    reads text that is not UTF-8 as binary, which every later string operation would refuse)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            col = table.column(i)
            try:
                text = col.cast(pa.string())
            except pa.ArrowInvalid:
                text = pa.array([None if b is None else b.decode("latin-1") for b in col.to_pylist()], pa.string())
            table = table.set_column(i, field.name, text)
    return table


def catalog_columns(path: str) -> list[str]:
    """The column names of a catalogue, read from its header or schema only (FITS vector columns included)."""
    _check_catalogue(path)
    try:
        kind = _kind(path)
        if kind == "npz":
            return list(_read_npz_table(path).column_names)
        if kind == "parquet":
            return _unique_names(path, list(pq.read_schema(path).names))
        if kind == "fits":
            from astropy.io import fits

            with fits.open(path) as hdul:
                hdu = _first_table_hdu(hdul)
                return list(hdu.columns.names)
        with pacsv.open_csv(path) as reader:
            return _unique_names(path, list(reader.schema.names))
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


def _read_npz_table(path: str, skip: tuple[str, ...] = ()) -> pa.Table:
    """The 1-D arrays of an npz that share its most common length (e.g. the MILES miles_id, teff, logg, feh), read
    without pickle; members named in `skip` (lower case: the spectra) are left out."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k.lower() not in skip and data[k].ndim == 1}
    except (OSError, ValueError) as exc:
        raise SpecllmError(f"{path}: unreadable npz ({str(exc).splitlines()[0][:160]})") from None
    if not arrays:
        raise SpecllmError(f"{path}: the npz holds no 1-D columns")
    lengths = [a.size for a in arrays.values()]
    n = max(set(lengths), key=lengths.count)
    return pa.table({k: a for k, a in arrays.items() if a.size == n})


def float_column(table: pa.Table, name: str, path: str = "table") -> np.ndarray:
    """Column `name` (exact spelling) as a new float64 array, with null, NaN, inf and survey placeholders
    (<= -9999) as NaN. Booleans read as 0/1, text is parsed; text that is no number fails with one line."""
    col = table.column(name)
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type)):
        try:
            col = col.cast(pa.float64(), safe=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise SpecllmError(f"{path}: column '{name}' is not numeric") from None
    return as_float(col.to_numpy(zero_copy_only=False))


class Table:
    """A table read whole, with case-insensitive column access (`path` names it in error messages)."""

    def __init__(self, path: str, table: pa.Table):
        self.path = path
        self.arrow = table
        self.n = table.num_rows
        self.names = ColumnNames(table.column_names)

    def has(self, name: str) -> bool:
        return self.names.find(name) is not None

    def first(self, candidates) -> str | None:
        """The first of `candidates` the table has (as the table spells it), None if none."""
        return self.names.first(candidates)

    def floats(self, name: str) -> np.ndarray:
        """A numeric column (any case) as float64 with missing values as NaN (see `float_column`)."""
        return float_column(self.arrow, self.names.find(name) or name, self.path)

    def values(self, name: str) -> list:
        """A column (any case) as Python values, None where null."""
        return self.arrow.column(self.names.find(name) or name).to_pylist()


def read_table(path: str, skip_npz: tuple[str, ...] = ()) -> Table:
    """A CSV, FITS, Parquet or npz table read whole (npz: its 1-D arrays, less the members in `skip_npz`); an empty
    table fails with one line."""
    if not os.path.exists(path):
        raise SpecllmError(f"{path}: no such file")
    _check_catalogue(path)
    table = _read_npz_table(path, skip_npz) if _kind(path) == "npz" else read_catalog(path)
    if table.num_rows == 0:
        raise SpecllmError(f"{path}: the table is empty")
    return Table(path, table)
