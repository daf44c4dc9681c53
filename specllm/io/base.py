"""The in-memory spectrum every reader returns, whatever the survey or file layout."""

from __future__ import annotations

import gzip
import os
import stat
import zlib
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


def _kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: str) -> None:
    """Raise `SpectrumRejected('not a regular file')` for a FIFO, device, socket or directory (reading one could
    hang or never end), before anything is read; a missing file raises `SpectrumRejected('unreadable')`."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SpectrumRejected("unreadable", "no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise SpectrumRejected(
            "unreadable", str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        ) from None
    if not stat.S_ISREG(mode):
        raise SpectrumRejected("not a regular file", f"{_kind_of(mode)}; only regular files are read")


def open_regular(path: str):
    """`open(path, 'rb')` for regular files only: opened without blocking (a FIFO opens at once) and checked on the
    open descriptor, so that nothing that is not a regular file is ever read, even when swapped in after a check."""
    check_regular(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SpectrumRejected("not a regular file", f"{_kind_of(mode)}; only regular files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def megabytes(size: float) -> str:
    return f"{size / 2**20:,.0f} MB" if size >= 2**20 else f"{size / 2**20:.3g} MB"


def too_large(what: str, limit: int) -> SpectrumRejected:
    """The one-line reject of an input beyond `ReadConfig.max_input_mb`: `what` says what was too large."""
    return SpectrumRejected("too large", f"{what}; the cap is {megabytes(limit)}, set by --max-input-mb")


def check_size(path: str, max_bytes: int) -> None:
    """Refuse (`too large`) a regular file of more than `max_bytes`, or a gzip that inflates to more (counted by
    inflating it in 1 MB pieces, so that memory stays flat); for readers that hand the path to a library which
    would inflate it whole."""
    with open_regular(path) as fh:
        if fh.read(2) != b"\x1f\x8b":
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise too_large(f"the file holds {megabytes(size)}", max_bytes)
            return
        fh.seek(0)
        total = 0
        try:
            with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                while chunk := gz.read(2**20):
                    total += len(chunk)
                    if total > max_bytes:
                        raise too_large(f"the gzip inflates to more than {megabytes(max_bytes)}", max_bytes)
        except (OSError, EOFError, zlib.error) as exc:
            raise SpectrumRejected("unreadable", f"corrupt or truncated gzip ({exc})") from None


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
