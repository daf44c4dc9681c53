"""A LAMOST label catalogue (the LASP stellar catalogue or any table like it), joined to spectra.

The join key is obsid, or the file name where the catalogue has no obsid (the DR1 sample). Required: the key and
the stage-1 labels teff, logg, feh; a catalogue lacking one fails at once, naming it.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pyarrow as pa

from ..config import CLASSES, STAGE1_LABELS
from ..errors import SpecllmError
from .tables import PLACEHOLDER_MAX, read_catalog

REQUIRED_LABELS = tuple(name for name, _ in STAGE1_LABELS)
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
    name = os.path.basename(str(path_or_name).strip())
    return re.sub(r"\.(fits?|fts)(\.gz)?$", "", name, flags=re.IGNORECASE)


def reduce_class(subclass: str | None) -> str | None:
    """LAMOST subclass -> A/F/G/K/M (`G3` -> G, `dM2`/`gM0`/`sdM1` -> M); None for anything else."""
    if not subclass:
        return None
    s = str(subclass).strip()
    s = re.sub(r"^(sd|d|g)(?=M)", "", s)
    return s[0] if s and s[0] in CLASSES else None


class LabelCatalog:
    def __init__(self, path: str):
        self.path = path
        table = read_catalog(path)
        lower = {}
        for name in table.column_names:
            key = name.strip().lower()
            if key and not key.startswith("unnamed") and key not in lower:
                lower[key] = name
        if "obsid" in lower:
            self.key = "obsid"
        else:
            self.key = next((k for k in FILENAME_KEYS if k in lower), None)
        if self.key is None:
            raise SpecllmError(f"{path}: catalogue lacks required column 'obsid' (or 'filename' to join on)")
        for label in REQUIRED_LABELS:
            if label not in lower:
                raise SpecllmError(f"{path}: catalogue lacks required column '{label}'")

        self.columns: dict[str, tuple[str, pa.DataType]] = {}  # shard column -> (catalogue column, type)
        for key, original in lower.items():
            if key in FILENAME_KEYS and key == self.key:
                continue
            target = KNOWN.get(key, f"cat_{key}" if key in RESERVED else key)
            self.columns[target] = (original, table.schema.field(original).type)
        self.extra_fields = [
            pa.field(target, typ if not pa.types.is_null(typ) else pa.string())
            for target, (_, typ) in self.columns.items()
            if target not in KNOWN.values()
        ]
        self._values = {target: self._clean(table.column(orig)) for target, (orig, _) in self.columns.items()}

        keys = table.column(lower[self.key]).to_pylist()
        if self.key == "obsid":
            keys = [int(k) if k is not None else None for k in keys]
        else:
            keys = [file_key(k) if k is not None else None for k in keys]
        self._index: dict = {}
        self.duplicates: set = set()
        for i, k in enumerate(keys):
            if k is None:
                continue
            if k in self._index:
                self.duplicates.add(k)
            else:
                self._index[k] = i
        self.n_rows = table.num_rows

    @staticmethod
    def _clean(column: pa.ChunkedArray) -> list:
        values = column.to_pylist()
        if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
            return [None if v is None or (isinstance(v, float) and not np.isfinite(v)) or v <= PLACEHOLDER_MAX else v for v in values]
        return values

    def lookup_key(self, obsid: int | None, path: str):
        return obsid if self.key == "obsid" else file_key(path)

    def lookup(self, key) -> dict | None:
        """The catalogue row for `key` under shard column names, None if absent. Raises on a duplicated key."""
        if key in self.duplicates:
            raise KeyError(key)
        i = self._index.get(key)
        if i is None:
            return None
        return {target: values[i] for target, values in self._values.items()}
