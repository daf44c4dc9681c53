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


# Spectral band indices (name: band, blue continuum, red continuum; air wavelengths in A): Lick/IDS (Worthey et al.
# 1994; Worthey & Ottaviani 1997 for H delta A), the M-dwarf TiO/CaH bands (Reid et al. 1995: one continuum window,
# given twice), H alpha, and the Ca II triplet (Cenarro et al. 2001, continua narrowed to end inside 8700 A). They
# carry what separates K/M stars, supergiants and very metal-poor stars from A/F/G stars at R~1800 (molecular bands,
# gravity-sensitive lines, the Balmer lines) whatever the flux calibration's slope.
BAND_INDICES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "HdeltaA": ((4083.500, 4122.250), (4041.600, 4079.750), (4128.500, 4161.000)),
    "CN1": ((4142.125, 4177.125), (4080.125, 4117.625), (4244.125, 4284.125)),
    "Ca4227": ((4222.250, 4234.750), (4211.000, 4219.750), (4241.000, 4251.000)),
    "G4300": ((4281.375, 4316.375), (4266.375, 4282.625), (4318.875, 4335.125)),
    "Fe4383": ((4369.125, 4420.375), (4359.125, 4370.375), (4442.875, 4455.375)),
    "Ca4455": ((4452.125, 4474.625), (4445.875, 4454.625), (4477.125, 4492.125)),
    "Hbeta": ((4847.875, 4876.625), (4827.875, 4847.875), (4876.625, 4891.625)),
    "Mg1": ((5069.125, 5134.125), (4895.125, 4957.625), (5301.125, 5366.125)),
    "Mgb": ((5160.125, 5192.625), (5142.625, 5161.375), (5191.375, 5206.375)),
    "Fe5270": ((5245.650, 5285.650), (5233.150, 5248.150), (5285.650, 5318.150)),
    "NaD": ((5876.875, 5909.375), (5860.625, 5875.625), (5922.125, 5948.125)),
    "TiO1": ((5936.625, 5994.125), (5816.625, 5849.125), (6038.625, 6103.625)),
    "TiO2": ((6189.625, 6272.125), (6066.625, 6141.625), (6372.625, 6415.125)),
    "Halpha": ((6554.000, 6575.000), (6515.000, 6540.000), (6590.000, 6615.000)),
    "CaH2": ((6814.000, 6846.000), (7042.000, 7046.000), (7042.000, 7046.000)),
    "CaH3": ((6960.000, 6990.000), (7042.000, 7046.000), (7042.000, 7046.000)),
    "TiO5": ((7126.000, 7135.000), (7042.000, 7046.000), (7042.000, 7046.000)),
    "Ca8498": ((8484.000, 8513.000), (8474.000, 8484.000), (8563.000, 8577.000)),
    "Ca8542": ((8522.000, 8562.000), (8474.000, 8484.000), (8563.000, 8577.000)),
    "Ca8662": ((8642.000, 8682.000), (8619.000, 8642.000), (8683.000, 8699.000)),
}


def band_indices(flux: np.ndarray, wave_vacuum: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(N, len(BAND_INDICES)) indices in magnitudes, -2.5 log10(band mean / continuum at the band's centre), the
    continuum a straight line through the two windows' means; `flux` (N, G) on the vacuum wavelengths `wave_vacuum`
    (G,). NaN where a window has no pixel on the grid or (with `mask` (N, G), True = not observed) any of its pixels
    unobserved."""
    flux = np.atleast_2d(np.asarray(flux, np.float64))
    wave = np.asarray(wave_vacuum, np.float64)
    unseen = None if mask is None else np.atleast_2d(np.asarray(mask, bool))
    out = np.full((len(flux), len(BAND_INDICES)), np.nan)

    def mean_in(window):
        lo, hi = air_to_vacuum(np.asarray(window))
        pick = (wave >= lo) & (wave <= hi)
        if not pick.any():
            return None, None, None
        missing = unseen[:, pick].any(1) if unseen is not None else np.zeros(len(flux), bool)
        return flux[:, pick].mean(1), float(wave[pick].mean()), missing

    for j, windows in enumerate(BAND_INDICES.values()):
        (f_band, w_band, m_band), (f_blue, w_blue, m_blue), (f_red, w_red, m_red) = map(mean_in, windows)
        if f_band is None or f_blue is None or f_red is None:
            continue
        t = (w_band - w_blue) / (w_red - w_blue) if w_red != w_blue else 0.0
        continuum = f_blue + t * (f_red - f_blue)
        ratio = np.clip(f_band, 1e-6, None) / np.clip(continuum, 1e-6, None)
        out[:, j] = np.where(m_band | m_blue | m_red, np.nan, -2.5 * np.log10(ratio))
    return out
