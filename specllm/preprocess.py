"""Shared preprocessing (paper section III.1), used identically by `ingest`, `infer` and every reader.

good pixels -> normalise -> cubic interpolation within observed runs onto the common grid -> round.

A cubic spline evaluated in masked gaps or past the observed edges overshoots wildly (values of 10^6 were seen on
real DR10 spectra), so its values are used only inside runs of consecutive good pixels. Grid points in a gap between
runs are filled linearly between the run ends, points past the observed edges take the nearest observed value;
both are flagged in the mask (True = filled, not observed flux).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline

from .config import CleanConfig, GridConfig
from .errors import SpectrumRejected


@dataclass
class Cleaned:
    flux: np.ndarray  # float32, grid size, normalised and rounded
    mask: np.ndarray  # bool, grid size, True where the value is filled rather than observed
    norm: float  # the divisor applied to the observed flux

    @property
    def coverage(self) -> float:
        return float(1.0 - self.mask.mean())


def check_snr(row: dict, clean: CleanConfig, required: bool = True) -> None:
    """SNR_r and SNR_i against the cut (`snr_min_r`, `snr_min_i`): raises `SpectrumRejected` ('low SNR', or 'no SNR'
    when a band is unmeasured). `ingest` rejects such a spectrum; `infer` labels it and flags it with the same reason.
    `row` holds `snrr`/`snri` (None where not measured). `required=False` (array sources, which rarely state an SNR):
    a missing SNR passes, a stated one is cut."""
    for band, minimum in (("r", clean.snr_min_r), ("i", clean.snr_min_i)):
        snr = row.get(f"snr{band}")
        if snr is None:
            if minimum > 0 and required:
                raise SpectrumRejected("no SNR", f"snr{band} is not measured (absent or -9999 in catalogue and header)")
        elif snr < minimum:
            raise SpectrumRejected("low SNR", f"snr{band} = {snr:.2f} < {minimum:g}")


def good_pixels(flux: np.ndarray, ivar: np.ndarray | None, ormask: np.ndarray | None, clean: CleanConfig) -> np.ndarray:
    good = np.ones(flux.shape, dtype=bool)
    if clean.mask_ormask and ormask is not None:
        good &= ormask == 0
    if clean.require_ivar and ivar is not None:
        good &= ivar > 0
    return good


def _runs(good: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of consecutive True values."""
    padded = np.concatenate(([False], good, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def normaliser(values: np.ndarray, clean: CleanConfig) -> float:
    if clean.norm == "max":
        return float(values.max())
    if clean.norm == "quantile":
        return float(np.quantile(values, clean.norm_quantile))
    if clean.norm == "median":
        return float(np.median(values))
    raise ValueError(f"unknown normalisation {clean.norm!r}")


def resample(
    wave: np.ndarray, flux: np.ndarray, good: np.ndarray, grid: np.ndarray, min_run: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cubic interpolation of `flux` (on `wave`) onto `grid`, trusted only within runs of good pixels.

    One cubic spline passes through every good pixel of the runs at least `min_run` long; it is evaluated only at
    grid points that lie inside such a run. Grid points in a gap are filled linearly between the run ends, points
    past the observed edges take the nearest observed value: no overshoot. Returns (values, mask) with mask True
    where the value was filled.
    """
    run_id = np.full(wave.shape, -1)
    for i, (a, b) in enumerate(_runs(good)):
        if b - a >= min_run:
            run_id[a:b] = i
    keep = run_id >= 0
    knots_w, knots_f, knots_run = wave[keep], flux[keep], run_id[keep]
    if knots_w.size < min_run:
        return np.full(grid.shape, np.nan), np.ones(grid.shape, dtype=bool)
    left = np.searchsorted(knots_w, grid, side="right") - 1
    inside = (left >= 0) & (left < knots_w.size)
    left_c = np.clip(left, 0, knots_w.size - 1)
    right_c = np.clip(left + 1, 0, knots_w.size - 1)
    observed = inside & (
        (knots_run[left_c] == knots_run[right_c]) & (left + 1 < knots_w.size) | (grid == knots_w[left_c])
    )
    out = np.interp(grid, knots_w, knots_f)  # linear between run ends, constant past the edges
    out[observed] = CubicSpline(knots_w, knots_f, bc_type="not-a-knot")(grid[observed])
    return out, ~observed


def clean_spectrum(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray | None,
    ormask: np.ndarray | None,
    grid: GridConfig,
    clean: CleanConfig,
) -> Cleaned:
    """Normalise and resample one spectrum; raises `SpectrumRejected` with the reason when it cannot be used."""
    flux = np.asarray(flux, dtype=np.float64)
    wave = np.asarray(wave, dtype=np.float64)
    if wave.shape != flux.shape or wave.ndim != 1:
        raise SpectrumRejected("bad layout", f"flux {flux.shape} and wavelength {wave.shape} differ in shape")
    if wave.size < 2 or not np.all(np.diff(wave) > 0):  # NaN fails too; every reader's (and the API's) spectra
        raise SpectrumRejected("bad wavelength", "wavelengths are not increasing")
    bad_values = ~np.isfinite(flux)
    if bad_values.any():
        raise SpectrumRejected("non-finite flux", f"{int(bad_values.sum())} NaN/inf flux values")
    good = good_pixels(flux, ivar, ormask, clean)
    gw = grid.wavelengths()
    in_grid = good & (wave >= gw[0] - grid.step) & (wave <= gw[-1] + grid.step)
    if not in_grid.any():
        raise SpectrumRejected("no good pixels", "no unmasked pixel inside the grid")
    norm = normaliser(flux[in_grid], clean)
    if not np.isfinite(norm) or norm <= 0:
        raise SpectrumRejected("non-positive normaliser", f"{clean.norm} of the good flux is {norm:.4g}")
    values, mask = resample(wave, flux / norm, good, gw, clean.min_run)
    coverage = 1.0 - mask.mean()
    if coverage < clean.min_coverage:
        raise SpectrumRejected(
            "poor coverage",
            f"observed flux covers {coverage:.0%} of {gw[0]:.0f}-{gw[-1]:.0f} A (minimum {clean.min_coverage:.0%})",
        )
    values = np.round(values, clean.decimals).astype(np.float32)
    return Cleaned(flux=values, mask=mask, norm=norm)
