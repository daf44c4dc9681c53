"""numpy `.npz` archives of spectra (the MILES library among them), read without pickle, row by row.

`flux` 1-D (one spectrum) or 2-D (one row per spectrum) and `wave` (or `wavelength`, `lambda`; `loglam` = log10
wavelength) 1-D (shared) or 2-D (per row); optional `ivar` (or `error`), ids, `ra`, `dec`, labels, 0-d
`fwhm_angstrom` and `medium` ('air' or 'vacuum'). The MILES file (it has `miles_id`) is in air wavelengths with
FWHM 2.5 A.
"""

from __future__ import annotations

import itertools
import math
import zipfile
from collections.abc import Iterator

import numpy as np

from ..base import NPZ_SUFFIXES, check_regular, megabytes, too_large
from .common import (
    ERROR_KEYS,
    FLUX_KEYS,
    FWHM_KEYS,
    IVAR_KEYS,
    MEDIUM_KEYS,
    MILES_FWHM,
    WAVE_KEYS,
    Columns,
    SourceInfo,
    first,
    lower_map,
    medium_of,
    noise_to_ivar,
    rejected,
)

SUFFIXES = NPZ_SUFFIXES


def identify(path: str) -> bool:
    """Every npz is taken for an array source by its name (its members are checked when it is read)."""
    return True


def _npy_header(fh):
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        return None
    if dtype.hasobject:
        raise rejected("", "unreadable", "object arrays in the npz (pickled data is never loaded)")
    return shape, fortran, dtype


def _member(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    with zf.open(name) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _rows(zf: zipfile.ZipFile, name: str) -> Iterator[np.ndarray]:
    """The rows of a 2-D member, decompressed one at a time (the whole array only where it is Fortran-ordered)."""
    with zf.open(name) as fh:
        header = _npy_header(fh)
        if header is not None and not header[1] and len(header[0]) == 2:
            (n, m), _, dtype = header
            size = m * dtype.itemsize
            for _ in range(n):
                buf = fh.read(size)
                if len(buf) < size:
                    raise rejected("", "unreadable", f"{name} is truncated")
                yield np.frombuffer(buf, dtype=dtype)
            return
    yield from _member(zf, name)


def _shape(zf: zipfile.ZipFile, name: str) -> tuple:
    """A member's shape from its header; one declaring more data than the member holds is refused (truncated)."""
    with zf.open(name) as fh:
        header = _npy_header(fh)
    if header is None:
        return _member(zf, name).shape
    shape, _, dtype = header
    declared = math.prod(shape) * dtype.itemsize
    if declared > zf.getinfo(name).file_size:
        raise rejected("", "unreadable", f"{name} declares {shape} {dtype} but holds fewer bytes (truncated)")
    return shape


def _open(path: str, max_bytes: int) -> tuple[zipfile.ZipFile, dict[str, str], str, str, tuple]:
    check_regular(path)  # a FIFO or device is never opened
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise rejected(path, "unreadable", f"not a readable npz file ({exc})") from None
    inflated = sum(info.file_size for info in zf.infolist())  # the central directory's sizes: nothing inflated yet
    if inflated > max_bytes:
        zf.close()
        raise too_large(f"the npz inflates to {megabytes(inflated)}", max_bytes)
    members = lower_map(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
    flux_key, wave_key = first(members, FLUX_KEYS), first(members, WAVE_KEYS)
    if flux_key is None or wave_key is None:
        zf.close()
        missing = "flux" if flux_key is None else "wave"
        raise rejected(path, "missing column", f"the npz has no '{missing}' array (has: {', '.join(members)})")
    shape = _shape(zf, flux_key + ".npy")
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[0] and shape[1] < 10):
        zf.close()
        raise rejected(path, "bad shape", f"flux has shape {shape}; expected (pixels,) or (spectra, pixels)")
    return zf, members, flux_key, wave_key, shape


def count(path: str, max_bytes: int) -> int:
    """The number of spectra, from the flux member's header alone."""
    zf, _, _, _, shape = _open(path, max_bytes)
    zf.close()
    return 1 if len(shape) == 1 else int(shape[0])


def load(path: str, max_bytes: int) -> tuple[SourceInfo, Columns, Iterator]:
    """(what the file says about all its spectra, its per-spectrum scalars, a generator of (wave, flux, ivar, {}))."""
    zf, members, flux_key, wave_key, shape = _open(path, max_bytes)
    n = 1 if len(shape) == 1 else shape[0]
    info = SourceInfo(n=n, loglam=wave_key.lower() == "loglam", miles="miles_id" in members)
    columns = Columns()
    skip = {flux_key, wave_key}
    ivar_key = first(members, IVAR_KEYS)
    err_key = None if ivar_key else first(members, ERROR_KEYS)
    skip |= {ivar_key, err_key}
    for low, name in members.items():
        if name in skip:
            continue
        if low in MEDIUM_KEYS or low in FWHM_KEYS:
            value = _member(zf, name + ".npy")
            if value.size == 1:
                if low in MEDIUM_KEYS:
                    info.medium = medium_of(value.reshape(()))
                else:
                    info.fwhm = float(value.reshape(()))
            continue
        member_shape = _shape(zf, name + ".npy")
        if member_shape == (n,) or (n == 1 and member_shape == ()):
            columns.values[low] = _member(zf, name + ".npy").reshape(n)
    if info.miles:
        info.data_release = "MILES"
        if "medium" not in members:
            info.medium = "air"
        if info.fwhm is None:
            info.fwhm = MILES_FWHM

    def rows():
        try:
            wave_shape = _shape(zf, wave_key + ".npy")
            shared = _member(zf, wave_key + ".npy") if len(wave_shape) == 1 else None
            noise_key = ivar_key or err_key
            if len(shape) == 1:
                wave = shared if shared is not None else _member(zf, wave_key + ".npy").ravel()
                noise = _member(zf, noise_key + ".npy").ravel() if noise_key else None
                yield wave, _member(zf, flux_key + ".npy"), noise_to_ivar(noise, bool(err_key)), {}
                return
            waves = itertools.repeat(shared) if shared is not None else _rows(zf, wave_key + ".npy")
            noises = _rows(zf, noise_key + ".npy") if noise_key else itertools.repeat(None)
            for wave, flux, noise in zip(waves, _rows(zf, flux_key + ".npy"), noises, strict=False):
                yield wave, flux, noise_to_ivar(noise, bool(err_key)), {}
        finally:
            zf.close()

    return info, columns, rows()
