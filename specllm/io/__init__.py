"""Readers per survey. `read_spectrum` opens a file, identifies its layout by content, then loads it.

Every failure becomes a `SpectrumRejected` with a one-line reason; callers never see a traceback.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator

from ..errors import SpecllmError, SpectrumRejected
from . import lamost
from .base import RawSpectrum
from .fitsfile import FastPathUnsupported, Hdu, open_fits

SPECTRUM_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz", ".fts", ".fts.gz")

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


def _identify_and_load(path: str, fast: bool) -> RawSpectrum:
    hdus = open_fits(path, fast=fast)
    unsupported = _recognise_unsupported(hdus)
    if unsupported:
        raise SpectrumRejected("unsupported layout", unsupported)
    layout = lamost.identify(hdus)
    if layout is None:
        raise SpectrumRejected("unknown layout", "not one of the three LAMOST low-resolution layouts")
    return lamost.load(hdus, path, layout)


def read_spectrum(path: str) -> RawSpectrum:
    """Open `path` (FITS, optionally gzipped), identify its layout from its content and load it."""
    try:
        try:
            return _identify_and_load(path, fast=True)
        except FastPathUnsupported:
            return _identify_and_load(path, fast=False)
    except SpectrumRejected:
        raise
    except FileNotFoundError:
        raise SpectrumRejected("unreadable", "no such file") from None
    except (OSError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpectrumRejected("unreadable", f"not a readable FITS file ({msg[:160]})") from None


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
            yield from (m for m in matches if os.path.isfile(m))
        else:
            yield item
