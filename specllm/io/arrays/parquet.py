"""Parquet tables of spectra, wide or long (see `layout`), read in batches; schema metadata `medium`/`fwhm_angstrom`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..base import PARQUET_SUFFIXES, check_regular, megabytes, too_large
from .common import FWHM_KEYS, MEDIUM_KEYS, Columns, SourceInfo, has_wave_and_flux, medium_of, noise_to_ivar, rejected
from .layout import batch_arrays, count_long, long_groups, table_layout

SUFFIXES = PARQUET_SUFFIXES


def identify(path: str) -> bool:
    """True when the schema (read from the footer only) has wave and flux columns."""
    import pyarrow.parquet as pq

    return has_wave_and_flux(pq.read_schema(path).names)


def _list_value(scalar) -> np.ndarray:
    if not scalar.is_valid:
        return np.array([], dtype=np.float64)
    return np.asarray(scalar.values.to_numpy(zero_copy_only=False), dtype=np.float64)


def load(path: str, max_bytes: int) -> tuple[SourceInfo, Columns, Iterator]:
    """(what the file says about all its spectra, its per-spectrum scalars, a generator of (wave, flux, ivar, scalars)).
    A row group (what is decoded at once) larger than `max_bytes` uncompressed is refused before it is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_regular(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise rejected(path, "unreadable", f"not a readable Parquet file ({str(exc).splitlines()[0][:120]})") from None
    meta = pf.metadata
    for g in range(meta.num_row_groups):
        size = meta.row_group(g).total_byte_size
        if size > max_bytes:
            raise too_large(f"row group {g} holds {megabytes(size)} uncompressed", max_bytes)
    schema = pf.schema_arrow

    def is_list(name: str) -> bool:
        t = schema.field(name).type
        return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)

    layout = table_layout(path, schema.names, is_list)
    info = SourceInfo(loglam=layout.wave.lower() == "loglam")
    meta = {
        k.decode("utf-8", "replace").lower(): v.decode("utf-8", "replace") for k, v in (schema.metadata or {}).items()
    }
    info.medium = medium_of(next((meta[k] for k in MEDIUM_KEYS if k in meta), "vacuum"))
    fwhm = next((meta[k] for k in FWHM_KEYS if k in meta), None)
    info.fwhm = float(fwhm) if fwhm is not None else None
    if layout.wide:
        info.n = pf.metadata.num_rows
        scalars = pf.read(columns=layout.scalars) if layout.scalars else None
        columns = Columns({n.lower(): scalars.column(n).to_numpy(zero_copy_only=False) for n in layout.scalars})

        def rows():
            wanted = [layout.wave, layout.flux, *([layout.noise] if layout.noise else [])]
            for batch in pf.iter_batches(batch_size=64, columns=wanted):
                for j in range(batch.num_rows):
                    wave = _list_value(batch.column(layout.wave)[j])
                    flux = _list_value(batch.column(layout.flux)[j])
                    noise = _list_value(batch.column(layout.noise)[j]) if layout.noise else None
                    yield wave, flux, noise_to_ivar(noise, layout.is_error), {}

        return info, columns, rows()
    info.n = (
        count_long(pf.read(columns=[layout.id_column]).column(0).to_numpy(zero_copy_only=False))
        if layout.id_column
        else 1
    )
    batches = (batch_arrays(b) for b in pf.iter_batches(batch_size=65536))
    return info, Columns(), long_groups(batches, layout, path, max_bytes=max_bytes)
