"""Wavelength and resolution conventions: translating a spectrum's physics into LAMOST's (air -> vacuum wavelengths,
Gaussian broadening to a resolving power). Pure numpy on arrays; the readers under `specllm.io` call these, they read
no file themselves."""

from __future__ import annotations

import numpy as np


def air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    """Air -> vacuum wavelengths in Angstrom (VALD3 / Piskunov formula, as used by SDSS and MILES users)."""
    wave_air = np.asarray(wave_air, dtype=np.float64)
    s2 = (1e4 / wave_air) ** 2
    n = (
        1.0
        + 0.00008336624212083
        + 0.02408926869968 / (130.1065924522 - s2)
        + 0.0001599740894897 / (38.92568793293 - s2)
    )
    return wave_air * n


def broaden(
    wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray | None, fwhm_in: float, resolution: float, sigmas: float
):
    """Gaussian broadening from a constant FWHM (A) to resolving power `resolution`, where the source is sharper.

    The kernel width varies with wavelength (sigma^2 = (lambda / R)^2 - fwhm_in^2, over 2 sqrt(2 ln 2)); where the
    source is already broader it is left as it is. Non-finite flux carries no weight. Returns (flux, ivar).
    """
    dpix = np.gradient(wave)
    extra = (wave / resolution) ** 2 - fwhm_in**2
    sigma_pix = np.sqrt(np.clip(extra, 0.0, None)) / (2.0 * np.sqrt(2.0 * np.log(2.0))) / dpix
    if not np.any(sigma_pix > 0.1):
        return flux, ivar
    half = int(np.ceil(sigmas * sigma_pix.max()))
    offsets = np.arange(-half, half + 1)
    finite = np.isfinite(flux)
    flux0 = np.where(finite, flux, 0.0)
    var = None
    if ivar is not None:
        var = np.where(ivar > 0, 1.0 / np.where(ivar > 0, ivar, 1.0), np.inf)
    out = np.empty_like(flux0)
    out_ivar = None if ivar is None else np.empty_like(flux0)
    block = max(1, 2_000_000 // offsets.size)  # bounded memory for long, finely sampled spectra
    for start in range(0, wave.size, block):
        rows = np.arange(start, min(start + block, wave.size))
        index = np.clip(rows[:, None] + offsets[None, :], 0, wave.size - 1)
        sig = np.maximum(sigma_pix[rows, None], 1e-6)
        w = np.exp(-0.5 * (offsets[None, :] / sig) ** 2) * finite[index]
        total = w.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[rows] = (w * flux0[index]).sum(axis=1) / total
            if var is not None:
                out_var = (w**2 * var[index]).sum(axis=1) / total**2
                out_ivar[rows] = np.where(np.isfinite(out_var) & (out_var > 0), 1.0 / out_var, 0.0)
    out[~finite] = np.nan  # a missing pixel stays missing
    return out, out_ivar
