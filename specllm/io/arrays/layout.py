"""Tables of spectra (Parquet, CSV, FITS), whatever the format: which columns hold what, and the long layout.

Wide: `wave` and `flux` array columns, one spectrum per row. Long: scalar `wave` and `flux` columns, one spectrum,
or one per run of equal ids when an id column is present. Every other scalar column (ids, ra, dec, labels) is kept
as metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..base import megabytes, too_large
from .common import ERROR_KEYS, FLUX_KEYS, ID_KEYS, IVAR_KEYS, WAVE_KEYS, first, lower_map, noise_to_ivar, rejected


@dataclass
class TableLayout:
    wave: str
    flux: str
    noise: str | None
    is_error: bool
    id_column: str | None
    scalars: list[str]
    wide: bool


def table_layout(path: str, names: list[str], is_list) -> TableLayout:
    """The layout of a table with columns `names`; `is_list(name)` tells an array column from a scalar one."""
    lower = lower_map(names)
    wave, flux = first(lower, WAVE_KEYS), first(lower, FLUX_KEYS)
    if wave is None or flux is None:
        missing = "flux" if flux is None else "wave"
        raise rejected(path, "missing column", f"no '{missing}' column (has: {', '.join(names[:20])})")
    ivar = first(lower, IVAR_KEYS)
    err = None if ivar else first(lower, ERROR_KEYS)
    wide = is_list(flux)
    if is_list(wave) != wide:
        raise rejected(path, "bad shape", "'wave' and 'flux' must both be array columns or both scalar columns")
    used = {wave, flux, ivar, err}
    scalars = [n for n in names if n not in used and not is_list(n)]
    id_column = None if wide else first(lower_map(scalars), ID_KEYS)
    return TableLayout(wave, flux, ivar or err, bool(err), id_column, scalars, wide)


def long_groups(
    batches, layout: TableLayout, path: str, extra: dict | None = None, max_bytes: int | None = None
) -> Iterator[tuple]:
    """Long tables: consecutive rows with the same id form one spectrum (the whole table when there is no id); a
    spectrum of more than `max_bytes` (its wave, flux and noise values) is refused (`too large`) as it grows."""
    current, parts, seen, held = None, [], set(), 0

    def emit():
        wave = np.concatenate([p[0] for p in parts])
        flux = np.concatenate([p[1] for p in parts])
        noise = np.concatenate([p[2] for p in parts]) if layout.noise else None
        return wave, flux, noise_to_ivar(noise, layout.is_error), parts[0][3]

    for batch in batches:
        cols = {n: np.asarray(batch[n]) for n in [layout.wave, layout.flux, *([layout.noise] if layout.noise else [])]}
        ids = np.asarray(batch[layout.id_column]) if layout.id_column else np.zeros(len(cols[layout.flux]), dtype=int)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], dtype=int)
        bounds = list(zip(starts, [*starts[1:], len(ids)], strict=True))
        for a, b in bounds:
            key = ids[a].item() if hasattr(ids[a], "item") else ids[a]
            if parts and key != current:
                yield emit()
                parts, held = [], 0
            if not parts:
                if key in seen:
                    raise rejected(path, "bad layout", f"rows of id {key!r} are not contiguous in the table")
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
            held += sum(p.nbytes for p in parts[-1][:3] if p is not None)
            if max_bytes is not None and held > max_bytes:
                raise too_large(f"one spectrum of the table holds more than {megabytes(max_bytes)}", max_bytes)
    if parts:
        yield emit()


def _scalar(value):
    if hasattr(value, "as_py"):
        return value.as_py()
    if isinstance(value, np.generic):
        return value.item()
    return value


def count_long(ids: np.ndarray) -> int:
    """The number of spectra in a long table: runs of equal ids."""
    return int(np.count_nonzero(np.r_[True, ids[1:] != ids[:-1]])) if len(ids) else 0


def batch_arrays(batch) -> dict[str, np.ndarray]:
    """A pyarrow record batch as {column name: numpy array}."""
    return {name: batch.column(k).to_numpy(zero_copy_only=False) for k, name in enumerate(batch.schema.names)}
