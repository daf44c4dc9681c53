"""FITS tables of spectra (wide or long, see `layout`), told apart from survey spectra by their headers.

The first table HDU with wave and flux columns is read, memory-mapped; header `AIRORVAC`/`FWHM` are read. A file
whose primary header belongs to a survey spectrum (an image, LAMOST or SDSS keywords) is `read_spectrum`'s job.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ...errors import SpectrumRejected
from ..base import FITS_SUFFIXES, check_regular, check_size
from .common import HEADER_KEYS, Columns, SourceInfo, has_wave_and_flux, medium_of, noise_to_ivar, rejected
from .layout import count_long, long_groups, table_layout

SUFFIXES = FITS_SUFFIXES


def _survey_primary(primary) -> bool:
    """True when a primary header (astropy Header or dict) belongs to a survey spectrum, not to an array table."""
    if primary.get("NAXIS", 0) != 0:
        return True  # LAMOST DR1-DR8 images and other image spectra: read_spectrum's job
    telescope = str(primary.get("TELESCOP", "")).upper()
    return telescope.startswith(("LAMOST", "SDSS")) or "OBSID" in primary or "DATA_V" in primary


def _primary_header(path: str, max_blocks: int = 36) -> dict | None:
    """The primary header of a FITS file (gzip or plain) from its first blocks only (~0.05 ms, where opening the
    file with astropy costs ~0.7 ms), or None where the fast card parser cannot tell (astropy then decides)."""
    import gzip

    from ..fitsfile import BLOCK, FastPathUnsupported, _card_value

    end_card = b"END" + b" " * 77
    wanted = (b"NAXIS   ", b"TELESCOP", b"OBSID   ", b"DATA_V  ")

    def parse(cards: bytes) -> dict:  # only the keywords `_survey_primary` reads
        return {
            cards[i : i + 8].decode().strip(): _card_value(cards[i + 10 : i + 80].decode("ascii"))
            for i in range(0, len(cards), 80)
            if cards[i : i + 8] in wanted and cards[i + 8 : i + 10] == b"= "
        }

    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as fh:
            data = b""
            for _ in range(max_blocks):
                block = fh.read(BLOCK)
                if len(block) < BLOCK:
                    return None
                data += block
                for i in range(len(data) - BLOCK, len(data), 80):
                    if data[i : i + 80] == end_card:
                        return parse(data[:i])
    except (OSError, EOFError, ValueError, UnicodeDecodeError, FastPathUnsupported):
        return None
    return None


def _table_hdu(hdul) -> int | None:
    """The index of the first table HDU with wave and flux columns, in a file that is not a survey spectrum."""
    if _survey_primary(hdul[0].header):
        return None  # LAMOST and SDSS files are survey spectra
    for k, hdu in enumerate(hdul[1:], start=1):
        if str(hdu.header.get("XTENSION", "")).strip() not in ("BINTABLE", "TABLE"):
            continue
        if has_wave_and_flux(hdu.columns.names):
            return k
    return None


def identify(path: str) -> bool:
    """True for a FITS table of spectra: a survey spectrum is told by its primary header alone (the common case:
    cheap); other files are opened to look for a table HDU with wave and flux columns."""
    import warnings

    from astropy.io import fits

    primary = _primary_header(path)
    if primary is not None and _survey_primary(primary):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=True) as hdul:
            return _table_hdu(hdul) is not None


def _native(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "SU":
        return np.char.strip(values.astype(str))
    return values.astype(values.dtype.newbyteorder("="))


def load(path: str, max_bytes: int) -> tuple[SourceInfo, Columns, Iterator]:
    """(what the file says about all its spectra, its per-spectrum scalars, a generator of (wave, flux, ivar, scalars)).
    A gzip inflating to more than `max_bytes`, or an HDU declaring more data, is refused before its data is read."""
    import warnings

    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning

    from ..fitsfile import check_declared

    if path.lower().endswith(".gz"):
        check_size(path, max_bytes)  # astropy inflates a .gz whole
    else:
        check_regular(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            hdul = fits.open(path, memmap=True)
            try:
                for j, hdu in enumerate(hdul):
                    check_declared(hdu.header, max_bytes, j)
            except SpectrumRejected:
                hdul.close()
                raise
            k = _table_hdu(hdul)
    except (OSError, ValueError, EOFError) as exc:
        raise rejected(path, "unreadable", f"not a readable FITS file ({str(exc).splitlines()[0][:120]})") from None
    if k is None:
        hdul.close()
        raise rejected(path, "missing column", "no FITS table with wave and flux columns")
    hdu = hdul[k]
    data = hdu.data
    dims = {n: data[n].ndim for n in hdu.columns.names}
    layout = table_layout(path, list(hdu.columns.names), lambda n: dims[n] > 1)
    info = SourceInfo(loglam=layout.wave.lower() == "loglam")
    for header in (hdu.header, hdul[0].header):
        medium = header.get("AIRORVAC") or header.get("WAVE_MEDIUM")
        if medium is not None:
            info.medium = medium_of(medium)
            break
        if "VACUUM" in header:
            info.medium = "vacuum" if header["VACUUM"] else "air"
            break
    fwhm = hdu.header.get("FWHM", hdul[0].header.get("FWHM"))
    info.fwhm = float(fwhm) if fwhm is not None else None
    if layout.wide:
        info.n = len(data)
        columns = Columns({n.lower(): _native(np.asarray(data[n])) for n in layout.scalars})

        def rows():
            try:
                for j in range(len(data)):
                    noise = np.asarray(data[layout.noise][j], dtype=np.float64) if layout.noise else None
                    yield (
                        np.asarray(data[layout.wave][j], dtype=np.float64),
                        np.asarray(data[layout.flux][j], dtype=np.float64),
                        noise_to_ivar(noise, layout.is_error),
                        {},
                    )
            finally:
                hdul.close()

        return info, columns, rows()
    ids = _native(np.asarray(data[layout.id_column])) if layout.id_column else None
    info.n = count_long(ids) if ids is not None else 1
    batch = {n: _native(np.asarray(data[n])) for n in hdu.columns.names}
    extra = {}
    if ids is None:  # one spectrum: its header may describe it
        for target, keys in HEADER_KEYS.items():
            for header in (hdu.header, hdul[0].header):
                key = next((k for k in keys if k in header), None)
                if key is not None:
                    extra[target] = header[key]
                    break
    hdul.close()
    return info, Columns(), long_groups([batch], layout, path, extra)
