"""A LAMOST label catalogue (the LASP stellar catalogue or any table like it), joined to spectra.

The join key is obsid, or the file name where the catalogue has no obsid (the DR1 sample). Required: the key and
the stage-1 labels teff, logg, feh; a catalogue lacking one fails at once, naming it.
"""

from __future__ import annotations

import os

import pyarrow as pa

from ..errors import SpecllmError
from ..labels import STAGE1_NAMES, clean_number
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
# Names a kept catalogue column may not take (they are the shard's own); such columns get a `cat_` prefix.
RESERVED = {"spec_id", "file", "data_release", "layout", "class", "split", "coverage", "flux", "mask", "norm"}


def file_key(path_or_name: str) -> str:
    """`dir/spec-55862-B6212_sp06-003.fits.gz` -> `spec-55862-B6212_sp06-003`."""
    return fits_stem(os.path.basename(str(path_or_name).strip()))


class LabelCatalog:
    def __init__(self, path: str):
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
        self._values = {target: self._clean(table.column(orig)) for target, (orig, _) in self.columns.items()}

        # Two indices: by obsid (where the catalogue has it) and by file name (where it has that).
        self._index: dict = {}
        self.duplicates: set = set()
        if "obsid" in lower:
            self._add_keys(
                ("obsid", int(k)) if k is not None else None for k in table.column(lower["obsid"]).to_pylist()
            )
        if self.file_column:
            self._add_keys(
                ("file", file_key(k)) if k else None for k in table.column(lower[self.file_column]).to_pylist()
            )
        self.n_rows = table.num_rows

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

        Raises KeyError(description) when the key is duplicated in the catalogue.
        """
        for key in (("obsid", obsid), ("file", file_key(path))):
            if key[1] is None:
                continue
            if key in self.duplicates:
                raise KeyError(f"{key[0]} {key[1]}")
            i = self._index.get(key)
            if i is not None:
                return {target: values[i] for target, values in self._values.items()}
        return None
