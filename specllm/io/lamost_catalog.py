"""A LAMOST label catalogue (the LASP stellar catalogue or any table like it), joined to spectra.

The join key is obsid, or the file name where the catalogue has no obsid (the DR1 sample). Required: the key and
the stage-1 labels teff, logg, feh; a catalogue lacking one fails at once, naming it.

The known columns are parsed with their declared types (`DECLARED`: obsid an integer that int64 holds, positions,
redshift, SNRs and labels numbers, class names text) when the catalogue is opened, before any spectrum is read. A
value that does not parse (Teff `abc`, log g `true`, obsid `1.5` or `1e30`) makes its row a bad row, named by
column, row and value in `problems`: a spectrum joined to it is rejected, a row whose key is bad joins nothing, and
with `strict` the first one is a usage error. Identity comes from the spectrum: a row found by file name whose obsid
differs from the file's own is not used (the spectrum is rejected with both ids named), never rewriting its id.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from ..errors import SpecllmError, SpectrumRejected, one_line
from ..labels import STAGE1_NAMES, clean_number
from .base import as_obsid, clean_position
from .tables import ColumnNames, fits_stem, read_catalog

REQUIRED_LABELS = STAGE1_NAMES
# Catalogue column (lower case) -> shard column. Everything else is kept under its own name.
KNOWN = {
    "obsid": "obsid",
    "ra": "ra",
    "dec": "dec",
    "z": "z",
    "class": "objclass",
    "subclass": "subclass",
    "snru": "snru",
    "snrg": "snrg",
    "snrr": "snrr",
    "snri": "snri",
    "snrz": "snrz",
    "teff": "teff",
    "logg": "logg",
    "feh": "feh",
}
FILENAME_KEYS = ("filename", "file", "fits_filename")
# The declared type of each known shard column read from a catalogue ("int": obsid); other columns keep their own.
DECLARED = {"obsid": "int", "objclass": "text", "subclass": "text", "ra": "position", "dec": "position"} | {
    k: "number" for k in ("z", "snru", "snrg", "snrr", "snri", "snrz", "teff", "logg", "feh")
}


def parse_number(value) -> float | None:
    """A catalogue number: None, NaN and placeholders (<= -9999) are missing; text is parsed; a boolean or text that
    is not a number raises ValueError (a log g column of `true` must never become 1.0)."""
    if isinstance(value, bool | np.bool_):
        raise ValueError("is not a number")
    if isinstance(value, str) and value.strip() and clean_number(value) is None:
        try:
            float(value)
        except ValueError:
            raise ValueError("is not a number") from None
    return clean_number(value)


def _parse(kind: str, value):
    if kind == "number":
        return parse_number(value)
    if kind == "position":
        return clean_position(value)
    if kind == "int":
        if (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and np.isnan(value)):
            return None
        return as_obsid(value)
    return None if value is None else str(value).strip() or None


# Names a kept catalogue column may not take (they are the shard's own); such columns get a `cat_` prefix.
RESERVED = {"spec_id", "file", "data_release", "layout", "class", "split", "coverage", "flux", "mask", "norm"}


def file_key(path_or_name: str) -> str:
    """`dir/spec-55862-B6212_sp06-003.fits.gz` -> `spec-55862-B6212_sp06-003`."""
    return fits_stem(os.path.basename(str(path_or_name).strip()))


class LabelCatalog:
    def __init__(self, path: str, strict: bool = False):
        self.path = path
        table = read_catalog(path)
        lower = {k: v for k, v in ColumnNames(table.column_names).items() if k and not k.startswith("unnamed")}
        self.file_column = next((k for k in FILENAME_KEYS if k in lower), None)
        if "obsid" not in lower and self.file_column is None:
            raise SpecllmError(f"{path}: catalogue lacks required column 'obsid' (or 'filename' to join on)")
        for label in REQUIRED_LABELS:
            if label not in lower:
                raise SpecllmError(f"{path}: catalogue lacks required column '{label}'")

        self.columns: dict[str, tuple[str, pa.DataType]] = {}  # shard column -> (catalogue column, type)
        for key, original in lower.items():
            if key == self.file_column:
                continue
            target = KNOWN.get(key, f"cat_{key}" if key in RESERVED else key)
            self.columns[target] = (original, table.schema.field(original).type)
        self.extra_fields = [
            pa.field(target, typ if not pa.types.is_null(typ) else pa.string())
            for target, (_, typ) in self.columns.items()
            if target not in KNOWN.values()
        ]
        # problems: (row number from 1, catalogue column, value, reason); bad: row index -> its first problem
        self.problems: list[tuple[int, str, object, str]] = []
        self.bad: dict[int, str] = {}
        self._values = {
            target: self._declared(target, orig, table.column(orig).to_pylist())
            if target in DECLARED
            else self._clean(table.column(orig))
            for target, (orig, _) in self.columns.items()
        }
        if strict and self.problems:
            raise SpecllmError(f"{one_line(path)}: {self.describe_problem(0)} (--strict: fix the catalogue)")

        # Two indices: by obsid (where the catalogue has it) and by file name (where it has that).
        self._index: dict = {}
        self.duplicates: set = set()
        if "obsid" in lower:
            self._add_keys(("obsid", k) if k is not None else None for k in self._values["obsid"])
        if self.file_column:
            self._add_keys(
                ("file", file_key(k)) if k else None for k in table.column(lower[self.file_column]).to_pylist()
            )
        self.n_rows = table.num_rows

    def _declared(self, target: str, column: str, values: list) -> list:
        """`values` parsed as DECLARED[target]; a value that does not parse is None and a problem of its row."""
        kind = DECLARED[target]
        out = []
        for i, value in enumerate(values):
            try:
                out.append(_parse(kind, value))
            except ValueError as exc:
                reason = str(exc).removeprefix(f"{value!r} ")
                self.problems.append((i + 1, column, value, reason))
                self.bad.setdefault(i, self.describe_problem(len(self.problems) - 1))
                out.append(None)
        return out

    def describe_problem(self, k: int) -> str:
        row, column, value, reason = self.problems[k]
        return one_line(f"row {row}, column {column}: {value!r} {reason}")

    def problem_summary(self) -> str | None:
        """One line for stderr: how many rows hold values that do not parse, and the first examples."""
        if not self.problems:
            return None
        first = "; ".join(self.describe_problem(k) for k in range(min(3, len(self.problems))))
        return one_line(
            f"{self.path}: {len(self.bad)} row(s) hold values that do not parse as their column's type; spectra "
            f"joined to them are rejected (first: {first})"
        )

    @staticmethod
    def _clean(column: pa.ChunkedArray) -> list:
        values = column.to_pylist()
        if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
            return [v if clean_number(v) is not None else None for v in values]  # the value keeps its type
        return values

    def _add_keys(self, keys) -> None:
        for i, k in enumerate(keys):
            if k is None:
                continue
            if k in self._index:
                self.duplicates.add(k)
            else:
                self._index[k] = i

    def lookup(self, obsid: int | None, path: str) -> dict | None:
        """The catalogue row of a spectrum (by obsid, else by file name) under shard column names, None if absent.

        Raises KeyError(description) when the key is duplicated in the catalogue, SpectrumRejected when the row
        holds a value that does not parse ('bad catalogue value') or, found by file name, names another obsid than
        the spectrum's own ('obsid conflict': the spectrum's identity is never rewritten).
        """
        for key in (("obsid", obsid), ("file", file_key(path))):
            if key[1] is None:
                continue
            if key in self.duplicates:
                raise KeyError(f"{key[0]} {key[1]}")
            i = self._index.get(key)
            if i is None:
                continue
            if i in self.bad:
                raise SpectrumRejected("bad catalogue value", f"{self.path} {self.bad[i]}")
            row = {target: values[i] for target, values in self._values.items()}
            other = row.get("obsid")
            if key[0] == "file" and obsid is not None and other is not None and other != obsid:
                raise SpectrumRejected(
                    "obsid conflict",
                    f"the file's OBSID is {obsid}, row {i + 1} of {self.path} (same file name) has obsid {other}; "
                    "the row is not used",
                )
            return row
        return None
