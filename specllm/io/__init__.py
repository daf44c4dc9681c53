"""Readers per survey. `read_spectrum` opens a file, identifies its layout by content, then loads it.

Every failure becomes a `SpectrumRejected` with a one-line reason; callers never see a traceback.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator

from astropy.io.fits.verify import VerifyError

from ..config import ReadConfig
from ..errors import SpecllmError, SpectrumRejected
from . import lamost
from .base import FITS_SUFFIXES, RawSpectrum
from .fitsfile import FastPathUnsupported, Hdu, open_fits

SPECTRUM_SUFFIXES = FITS_SUFFIXES

__all__ = ["RawSpectrum", "read_spectrum", "expand_inputs", "SPECTRUM_SUFFIXES"]


def _recognise_unsupported(hdus: list[Hdu]) -> str | None:
    """A reason for files we know but cannot use as low-resolution spectra."""
    names = {h.name for h in hdus}
    header = hdus[0].header
    if {"COADD_B", "COADD_R"} & names or str(header.get("FILENAME", "")).startswith("med-"):
        return "LAMOST medium-resolution spectrum (R~7500), not a low-resolution spectrum"
    telescope = str(header.get("TELESCOP", ""))
    if telescope.upper().startswith("SDSS") or "SPECOBJ" in names:
        return f"SDSS spectrum ({telescope or 'SPECOBJ table'}), not a LAMOST low-resolution spectrum"
    return None


def _identify_and_load(path: str, fast: bool, max_bytes: int) -> RawSpectrum:
    hdus = open_fits(path, fast=fast, max_bytes=max_bytes)
    unsupported = _recognise_unsupported(hdus)
    if unsupported:
        raise SpectrumRejected("unsupported layout", unsupported)
    layout = lamost.identify(hdus)
    if layout is None:
        raise SpectrumRejected("unknown layout", "not one of the three LAMOST low-resolution layouts")
    return lamost.load(hdus, path, layout)


def read_spectrum(path: str, limits: ReadConfig = ReadConfig()) -> RawSpectrum:
    """Open `path` (FITS, optionally gzipped), identify its layout from its content and load it. Only regular files
    are read, at most `limits.max_input_mb` of them (inflated, or as declared by the headers)."""
    try:
        try:
            return _identify_and_load(path, fast=True, max_bytes=limits.max_bytes)
        except FastPathUnsupported:
            return _identify_and_load(path, fast=False, max_bytes=limits.max_bytes)
    except SpectrumRejected:
        raise
    except FileNotFoundError:
        raise SpectrumRejected("unreadable", "no such file") from None
    except MemoryError:  # a last resort: every size a header declares is checked before it is read
        raise SpectrumRejected("too large", "not enough memory to read it (--max-input-mb caps the size)") from None
    except (OSError, EOFError, ValueError, TypeError, IndexError, KeyError, ArithmeticError, VerifyError) as exc:
        raise SpectrumRejected("unreadable", f"not a readable FITS file ({_first_line(exc)})") from None
    except AssertionError as exc:  # astropy checks some header values (a TTYPEn that is no name) with assert
        raise SpectrumRejected("unreadable", f"not a readable FITS file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none), at most 160 chars."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:160]


def _is_spectrum_file(name: str) -> bool:
    return name.lower().endswith(SPECTRUM_SUFFIXES)


def expand_inputs(inputs: Iterable[str]) -> Iterator[str]:
    """Files as given, directories walked (sorted), globs (quoted, `**` allowed) expanded in sorted order.

    A lazily evaluated stream: directory contents are listed one directory at a time.
    """
    for item in inputs:
        if os.path.isdir(item):
            for root, dirs, files in os.walk(item):
                dirs.sort()
                for name in sorted(files):
                    if _is_spectrum_file(name):
                        yield os.path.join(root, name)
        elif glob.has_magic(item):
            matches = sorted(glob.iglob(item, recursive=True))
            if not matches:
                raise SpecllmError(f"{item}: the pattern matches no file")
            yield from (m for m in matches if not os.path.isdir(m))  # a FIFO or device: refused in one line
        else:
            yield item


# ---------------------------------------------------------------- array sources (issue 7)
# Spectra given as arrays with their own wavelength grid (MILES npz, wave/flux tables): see the `arrays` package (one loader per format).
# An array file holding N spectra is addressed spectrum by spectrum through virtual paths `FILE#0` ... `FILE#N-1`.

from .arrays import LAYOUT_ARRAY, array_count, is_array_source, iter_array_spectra, read_array_row  # noqa: E402

__all__ += ["LAYOUT_ARRAY", "is_array_source", "iter_array_spectra", "expand_spectra", "load_spectrum", "iter_spectra"]


def expand_spectra(paths: Iterable[str], limits: ReadConfig = ReadConfig()) -> Iterator[str]:
    """Paths as given, except that an array source becomes one virtual path `FILE#i` per spectrum."""
    for path in paths:
        if is_array_source(path):
            try:
                n = array_count(path, limits)
            except SpectrumRejected:
                yield path  # unreadable: load_spectrum reports why
                continue
            yield from (f"{path}#{i}" for i in range(n))
        else:
            yield path


def load_spectrum(path: str, limits: ReadConfig = ReadConfig()) -> RawSpectrum:
    """One spectrum: a survey FITS file through `read_spectrum`, a virtual path `FILE#i` from its array source."""
    if "#" in path and not os.path.exists(path):
        return read_array_row(path, limits=limits)
    if is_array_source(path):
        raise SpectrumRejected("array source", "holds spectra as arrays: expand it with expand_spectra first")
    return read_spectrum(path, limits)


def iter_spectra(path: str, limits: ReadConfig = ReadConfig()) -> Iterator[RawSpectrum | SpectrumRejected]:
    """Every spectrum of one input file, streamed: the rows of an array source, or the one spectrum of a FITS file.

    Yields a `RawSpectrum`, or a `SpectrumRejected` (with `.path`) for a spectrum that cannot be read; the caller
    reports it (one line naming the path and reason) and goes on.
    """
    if is_array_source(path):
        try:
            yield from iter_array_spectra(path, limits=limits)
        except SpectrumRejected as exc:
            exc.path = getattr(exc, "path", path) or path
            yield exc
        return
    try:
        yield read_spectrum(path, limits)
    except SpectrumRejected as exc:
        exc.path = path
        yield exc
