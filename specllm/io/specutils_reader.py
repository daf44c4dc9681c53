"""A LAMOST low-resolution reader for specutils (which has none): `Spectrum.read(path, format="LAMOST-LRS")`.

Importing this module registers the reader (specutils is an optional extra: `pip install specllm[specutils]`).
The file goes through `specllm.io.read_spectrum` (any of the three layouts, gzipped or not): wavelengths in
Angstrom (vacuum), flux as the pipeline gives it, inverse variance as `InverseVariance`, the OR mask as `mask`
(True on pixels the pipeline flagged), and the header facts (obsid, ra, dec, class, SNR...) in `meta`.
"""

from __future__ import annotations

import astropy.units as u
from astropy.nddata import InverseVariance
from specutils import Spectrum
from specutils.io.registers import data_loader

from . import read_spectrum
from .base import FITS_SUFFIXES
from .fitsfile import open_fits
from .lamost import identify

FORMAT = "LAMOST-LRS"


def _identify(origin, path, *args, **kwargs) -> bool:
    if not isinstance(path, str) or not path.lower().endswith(FITS_SUFFIXES):
        return False
    try:
        return identify(open_fits(path, fast=False)) is not None
    except Exception:  # not a file this reader knows: specutils tries the others
        return False


@data_loader(FORMAT, identifier=_identify, extensions=["fits", "fits.gz"], dtype=Spectrum, priority=10)
def lamost_lrs(path, **kwargs) -> Spectrum:
    path = getattr(path, "name", path)  # identified automatically, specutils passes the open file
    raw = read_spectrum(str(path))
    return Spectrum(
        spectral_axis=raw.wave * u.AA,
        flux=raw.flux * u.dimensionless_unscaled,
        uncertainty=None if raw.ivar is None else InverseVariance(raw.ivar),
        mask=None if raw.ormask is None else raw.ormask != 0,
        meta=dict(raw.meta, file=raw.path, layout=raw.layout),
    )
