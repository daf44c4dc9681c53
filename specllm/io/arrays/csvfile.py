"""CSV tables of spectra (plain or gzipped): long layout only (scalar wave and flux columns, see `layout`)."""

from __future__ import annotations

from collections.abc import Iterator

from ..base import CSV_SUFFIXES, check_size
from .common import Columns, SourceInfo, has_wave_and_flux, rejected
from .layout import batch_arrays, count_long, long_groups, table_layout

SUFFIXES = CSV_SUFFIXES


def identify(path: str) -> bool:
    """True when the header line has wave and flux columns."""
    import pyarrow.csv as pacsv

    return has_wave_and_flux(pacsv.open_csv(path).schema.names)


def load(path: str, max_bytes: int) -> tuple[SourceInfo, Columns, Iterator]:
    """(what the file says about all its spectra, no per-spectrum columns, a generator of (wave, flux, ivar, scalars)).
    A file (inflated) larger than `max_bytes` is refused before it is parsed."""
    import pyarrow.csv as pacsv

    check_size(path, max_bytes)
    try:
        reader = pacsv.open_csv(path)
    except Exception as exc:  # pyarrow's CSV errors come in several types
        raise rejected(path, "unreadable", f"not a readable CSV table ({str(exc).splitlines()[0][:120]})") from None
    layout = table_layout(path, reader.schema.names, lambda n: False)
    info = SourceInfo(loglam=layout.wave.lower() == "loglam")
    if layout.id_column:
        ids = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=[layout.id_column])).column(0)
        info.n = count_long(ids.to_numpy(zero_copy_only=False))
    else:
        info.n = 1
    batches = (batch_arrays(b) for b in reader)
    return info, Columns(), long_groups(batches, layout, path, max_bytes=max_bytes)
