"""The in-memory spectrum every reader returns, whatever the survey or file layout."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SpectrumRejected

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


INT64_MAX = 2**63 - 1


def as_obsid(value) -> int | None:
    """An obsid as a validated integer: None stays None; anything that is not a whole number in 0..2**63-1
    (1.5, 1e30, 'x', True) raises ValueError naming the value. Ids are stored as int64."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{value!r} is not an integer id")
    if isinstance(value, str):
        text = value.strip()
        if not text.lstrip("+").isdigit():
            raise ValueError(f"{value!r} is not an integer id")
        number = int(text)
    elif isinstance(value, int | np.integer):
        number = int(value)
    elif isinstance(value, float | np.floating) and np.isfinite(value) and float(value).is_integer():
        number = int(value)
    else:
        raise ValueError(f"{value!r} is not an integer id")
    if not 0 <= number <= INT64_MAX:
        raise ValueError(f"{value!r} is outside 0..2**63-1")
    return number


def clean_position(value) -> float | None:
    """ra or dec (degrees) as a float; None where missing (None, empty text, NaN, the -9999 placeholder itself).
    Text or a boolean that is not a number raises ValueError. Every other value (1e308, -1e308, inf) is kept, for
    `position_problem` to name: a position is never silently dropped for being absurd."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool | np.bool_):
        raise ValueError("is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("is not a number") from None
    return None if np.isnan(number) or -10000 <= number <= -9999 else number


def position_problem(ra, dec) -> str | None:
    """Why (ra, dec) in degrees is not a sky position (outside [0, 360) x [-90, 90]), or None when it is one or
    is not given."""
    if ra is not None and not (np.isfinite(ra) and 0 <= ra < 360):
        return f"ra = {ra!r} is outside [0, 360)"
    if dec is not None and not (np.isfinite(dec) and -90 <= dec <= 90):
        return f"dec = {dec!r} is outside [-90, 90]"
    return None


def check_identity(meta: dict) -> int | None:
    """The spectrum's obsid, validated (an integer that int64 holds), with its position on the sky; else
    SpectrumRejected ('bad obsid', 'bad position'): a per-spectrum reject in ingest, a failed row in infer, so one
    bad header never stops a run. `meta` is a reader's meta (or ingest's row, which carries it)."""
    if meta.get("obsid_invalid"):
        raise SpectrumRejected("bad obsid", meta["obsid_invalid"])
    try:
        obsid = as_obsid(meta.get("obsid"))
    except ValueError as exc:
        raise SpectrumRejected("bad obsid", f"obsid {exc}") from None
    problem = position_problem(meta.get("ra"), meta.get("dec"))
    if problem:
        raise SpectrumRejected("bad position", problem)
    return obsid
