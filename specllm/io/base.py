"""The in-memory spectrum every reader returns, whatever the survey or file layout."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# File name suffixes by format (matched case-insensitively), named once for every reader.
FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz", ".fts", ".fts.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz")
NPZ_SUFFIXES = (".npz",)


@dataclass
class RawSpectrum:
    """A spectrum as observed: its own wavelength grid, before any cleaning.

    wave: wavelengths in Angstrom (LAMOST: vacuum), increasing.
    flux, ivar: flux and inverse variance per pixel (ivar None where the source has none).
    ormask: the pipeline's OR mask per pixel (0 = good), or None where the source has none.
    meta: header facts with specllm's names: obsid, data_release, objclass, subclass, snru..snrz, ra, dec, z.
    """

    path: str
    layout: str
    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray | None = None
    ormask: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
