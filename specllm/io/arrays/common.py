"""What every array-source loader shares: column-name conventions, virtual paths, the per-source facts and the
helpers that read them. Each loader (`npz`, `parquet`, `csvfile`, `fitstable`) imports its constants from here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ...errors import SpectrumRejected
from ..tables import ColumnNames

LAYOUT_ARRAY = "array"
VIRTUAL_SEP = "#"

# Column (or npz member) names, matched case-insensitively, first match wins.
WAVE_KEYS = ("wave", "wavelength", "wavelengths", "lambda", "lam", "loglam")
FLUX_KEYS = ("flux", "spectra", "spectrum", "specificintensity")
IVAR_KEYS = ("ivar", "inverse_variance")
ERROR_KEYS = ("error", "err", "flux_err", "sigma", "uncertainty")
ID_KEYS = ("spec_id", "obsid", "miles_id", "id", "name", "designation", "object")
LABEL_KEYS = {
    "teff": ("teff",),
    "logg": ("logg",),
    "feh": ("feh", "fe_h", "m_h", "mh"),
    "teff_err": ("teff_err", "e_teff"),
    "logg_err": ("logg_err", "e_logg"),
    "feh_err": ("feh_err", "e_feh", "e_fe_h"),
}
COORD_KEYS = {"ra": ("ra",), "dec": ("dec",)}
CLASS_KEYS = {"subclass": ("subclass", "sptype", "spt"), "objclass": ("class",)}
# FITS header keywords describing a single spectrum (BOSZ synthetic spectra: T_EFF, LOGG, MH).
HEADER_KEYS = {
    "teff": ("TEFF", "T_EFF"),
    "logg": ("LOGG",),
    "feh": ("FEH", "FE_H", "MH", "M_H"),
    "ra": ("RA",),
    "dec": ("DEC",),
}
MEDIUM_KEYS = ("medium", "wave_medium", "airorvac")
FWHM_KEYS = ("fwhm_angstrom", "fwhm")
MILES_FWHM = 2.5  # A, the MILES library's resolution (Falcon-Barroso et al. 2011)
BAD_PIXEL = 1  # ormask bit set by this reader for non-finite flux


def miles_spec_id(miles_id: int) -> str:
    """The spec_id of a MILES star: `miles-0272` for MILES number 272 (`s0272` in the MILES tables)."""
    return f"miles-{int(miles_id):04d}"


def virtual_path(path: str, index: int) -> str:
    return f"{path}{VIRTUAL_SEP}{index}"


def split_virtual(path: str) -> tuple[str, int] | None:
    """`table.npz#12` -> ('table.npz', 12); None for an ordinary path."""
    base, sep, tail = str(path).rpartition(VIRTUAL_SEP)
    if not sep or not tail.isdigit() or not os.path.isfile(base):
        return None
    return base, int(tail)


def rejected(path: str, reason: str, detail: str) -> SpectrumRejected:
    exc = SpectrumRejected(reason, detail)
    exc.path = path
    return exc


lower_map = ColumnNames  # lower-case name -> name as given: the one case-insensitive lookup (io/tables.py)


def first(lower: ColumnNames, keys) -> str | None:
    """The name (as given) of the first of `keys` present in `lower` (a `lower_map`), or None."""
    return lower.first(keys)


def has_wave_and_flux(names) -> bool:
    lower = lower_map(names)
    return first(lower, WAVE_KEYS) is not None and first(lower, FLUX_KEYS) is not None


def medium_of(value) -> str:
    text = str(value.item() if isinstance(value, np.ndarray) else value).strip().lower()
    if isinstance(value, (bool, np.bool_)):
        return "air" if value else "vacuum"
    return "air" if text.startswith("air") else "vacuum"


def noise_to_ivar(noise: np.ndarray | None, is_error: bool) -> np.ndarray | None:
    if noise is None:
        return None
    noise = np.asarray(noise, dtype=np.float64)
    if not is_error:
        return noise
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(noise) & (noise > 0), 1.0 / noise**2, 0.0)


@dataclass
class SourceInfo:
    """What a source says about all its spectra."""

    medium: str = "vacuum"
    fwhm: float | None = None
    loglam: bool = False
    data_release: str | None = None
    miles: bool = False
    n: int = 0


@dataclass
class Columns:
    """The per-spectrum scalar columns of a source (ids, coordinates, labels), lower-case name -> values."""

    values: dict[str, np.ndarray] = field(default_factory=dict)

    def row(self, i: int) -> dict:
        return {k: v[i] for k, v in self.values.items()}
