"""Shared cleaning (specllm.preprocess): the paper's grid, normalisation, rounding, and no overshoot in gaps/edges."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import CubicSpline

from specllm.config import CleanConfig, GridConfig
from specllm.errors import SpectrumRejected
from specllm.preprocess import clean_spectrum, good_pixels, resample

from .fitsfactory import log_grid, stellar_flux

GRID = GridConfig()
GW = GRID.wavelengths()
PAPER = CleanConfig()


def _clean(wave, flux, ivar=None, ormask=None, **options):
    return clean_spectrum(wave, flux, ivar, ormask, GRID, CleanConfig(**options))


def _is_rounded(values, decimals=3):
    scaled = values.astype(np.float64) * 10**decimals
    return np.all(np.abs(scaled - np.round(scaled)) < 1e-3)


def test_grid_is_the_papers():
    assert GRID.size == 4901
    assert GW[0] == 3800.0 and GW[-1] == 8700.0 and np.all(np.diff(GW) == 1.0)


def test_full_coverage_spectrum():
    wave = log_grid()
    flux = stellar_flux(wave, 5750.0)
    out = _clean(wave, flux)
    assert out.flux.shape == (4901,) and out.flux.dtype == np.float32
    assert out.mask.shape == (4901,) and out.mask.dtype == bool and not out.mask.any() and out.coverage == 1.0
    in_grid = (wave >= 3799) & (wave <= 8701)
    assert out.norm == pytest.approx(float(flux[in_grid].max()))
    assert out.flux.max() == pytest.approx(1.0, abs=1e-3)
    assert _is_rounded(out.flux)
    paper = np.round(CubicSpline(wave, flux / out.norm)(GW), 3)  # the paper's recipe where nothing is masked
    assert np.abs(out.flux - paper).max() <= 1.001e-3


@pytest.mark.parametrize("decimals", [2, 4])
def test_rounding_option(decimals):
    wave = log_grid()
    out = _clean(wave, stellar_flux(wave, 6500.0, noise=0.01), decimals=decimals)
    assert _is_rounded(out.flux, decimals) and not _is_rounded(out.flux, decimals - 1)


def test_masked_gap_is_filled_without_overshoot_and_flagged():
    wave = log_grid()
    flux = stellar_flux(wave, 5750.0, noise=0.05, seed=3).astype(np.float64)
    ormask = np.zeros(wave.size)
    gap = (wave > 5700) & (wave < 6000)
    ormask[gap] = 1
    flux[gap] = 1e5  # garbage under the mask must not matter
    good = ormask == 0
    naive = CubicSpline(wave[good], flux[good] / flux[good].max())(GW)
    assert naive.max() > 2.0  # a plain spline across this gap explodes (the case the cleaning must survive)

    out = _clean(wave, flux, ormask=ormask)
    assert np.abs(out.flux).max() <= 1.05 and out.flux.min() >= 0
    last, first = np.flatnonzero(good & (wave < 5700))[-1], np.flatnonzero(good & (wave > 6000))[0]
    in_gap = (GW > wave[last]) & (GW < wave[first])
    assert out.mask[in_gap].all() and not out.mask[~in_gap].any()
    ends = sorted([flux[last] / out.norm, flux[first] / out.norm])
    assert np.all(out.flux[in_gap] >= ends[0] - 1e-3) and np.all(out.flux[in_gap] <= ends[1] + 1e-3)  # linear fill
    assert out.coverage == pytest.approx(1 - in_gap.mean())


def test_edges_take_nearest_value_without_extrapolation():
    wave = log_grid()
    sel = (wave > 4000) & (wave < 8500)
    wave, flux = wave[sel], stellar_flux(wave[sel], 5750.0).astype(np.float64)
    flux[-30:] *= np.linspace(1, 3, 30)  # a steep rise at the red end
    naive = CubicSpline(wave, flux / flux.max())(GW)
    assert np.abs(naive).max() > 100  # extrapolating a cubic explodes

    out = _clean(wave, flux)
    assert np.abs(out.flux).max() <= 1.0 + 1e-3
    blue, red = GW < wave[0], GW > wave[-1]
    assert out.mask[blue].all() and out.mask[red].all() and not out.mask[~blue & ~red].any()
    assert np.all(out.flux[blue] == np.float32(np.round(flux[0] / out.norm, 3)))
    assert np.all(out.flux[red] == np.float32(np.round(flux[-1] / out.norm, 3)))


def test_short_runs_between_masked_pixels_are_not_trusted():
    wave = log_grid()
    flux = stellar_flux(wave, 5750.0).astype(np.float64)
    ormask = np.zeros(wave.size)
    region = np.flatnonzero((wave > 6000) & (wave < 6200))
    ormask[region] = 1
    pairs = np.concatenate([region[3:-3:5], region[4:-3:5]])
    ormask[pairs] = 0  # isolated pairs of good pixels: runs of 2
    flux[pairs] *= 5  # and wrong: they must not shape the output (they do set the maximum: they are good pixels)
    out = _clean(wave, flux, ormask=ormask)
    inside = (GW > wave[region[0]]) & (GW < wave[region[-1]])
    assert out.mask[inside].all()
    assert out.flux.max() <= 1.0 + 1e-3
    loose = _clean(wave, flux, ormask=ormask, min_run=2)
    assert not loose.mask[inside].all()  # with min_run=2 they count as observed
    assert loose.flux[inside].max() > 0.9 > out.flux[inside].max()


def test_hot_pixel_and_robust_normalisations():
    wave = log_grid()
    flux = stellar_flux(wave, 5750.0, noise=0.01).astype(np.float64)
    flux[2000] = 100 * flux.max()  # one hot pixel
    paper = _clean(wave, flux)
    assert paper.norm == pytest.approx(flux[2000]) and np.median(paper.flux) < 0.02
    in_grid = flux[(wave >= 3799) & (wave <= 8701)]
    quantile = _clean(wave, flux, norm="quantile", norm_quantile=0.99)
    assert quantile.norm == pytest.approx(np.quantile(in_grid, 0.99)) and quantile.norm < flux.max() / 50
    assert 0.9 < np.quantile(quantile.flux, 0.99) < 1.1
    median = _clean(wave, flux, norm="median")
    assert median.norm == pytest.approx(np.median(in_grid))
    np.testing.assert_allclose(median.flux, quantile.flux * (quantile.norm / median.norm), atol=0.003)
    with pytest.raises(ValueError, match="unknown normalisation"):
        _clean(wave, flux, norm="mean")


def test_good_pixels_options():
    flux = np.ones(6)
    ivar = np.array([1, 0, 1, 1, -1, 1.0])
    ormask = np.array([0, 0, 2, 0, 0, 0])
    assert good_pixels(flux, ivar, ormask, PAPER).tolist() == [True, False, False, True, False, True]
    assert good_pixels(flux, ivar, ormask, CleanConfig(mask_ormask=False)).tolist() == [
        True,
        False,
        True,
        True,
        False,
        True,
    ]
    assert good_pixels(flux, ivar, ormask, CleanConfig(require_ivar=False)).tolist() == [
        True,
        True,
        False,
        True,
        True,
        True,
    ]
    assert good_pixels(flux, None, None, PAPER).all()


def test_zero_ivar_pixels_are_masked():
    wave = log_grid()
    ivar = np.full(wave.size, 0.01)
    ivar[(wave > 7000) & (wave < 7100)] = 0
    out = _clean(wave, stellar_flux(wave), ivar=ivar)
    assert out.mask[(GW > 7001) & (GW < 7099)].all()
    assert not _clean(wave, stellar_flux(wave), ivar=ivar, require_ivar=False).mask.any()


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda w, f, orm: (f.__setitem__(100, np.nan), orm)[1], "non-finite flux"),
        (lambda w, f, orm: (f.__setitem__(slice(5, 9), np.inf), orm)[1], "non-finite flux"),
        (lambda w, f, orm: np.ones_like(orm), "no good pixels"),
        (lambda w, f, orm: (f.__imul__(-1), orm)[1], "non-positive normaliser"),
        (lambda w, f, orm: (f.__imul__(0), orm)[1], "non-positive normaliser"),
        (lambda w, f, orm: np.where(w < 7000, 1, 0), "poor coverage"),
    ],
    ids=["nan", "inf", "all-masked", "negative", "zero", "coverage"],
)
def test_rejections(change, reason):
    wave = log_grid()
    flux = stellar_flux(wave).astype(np.float64)
    ormask = change(wave, flux, np.zeros(wave.size))
    with pytest.raises(SpectrumRejected) as info:
        _clean(wave, flux, ormask=ormask)
    assert info.value.reason == reason and info.value.detail


def test_min_coverage_option():
    wave = log_grid()
    red = wave > 7000  # covers (8700 - 7000) / 4900 = 35 % of the grid
    with pytest.raises(SpectrumRejected, match="35%"):
        _clean(wave[red], stellar_flux(wave[red]))
    out = _clean(wave[red], stellar_flux(wave[red]), min_coverage=0.3)
    assert out.coverage == pytest.approx(0.347, abs=0.002) and out.mask[GW < 7000].all()


def test_spectrum_outside_the_grid():
    wave = np.linspace(9000, 10000, 500)
    with pytest.raises(SpectrumRejected, match="no unmasked pixel inside the grid"):
        _clean(wave, np.ones(500))


def test_resample_returns_mask_when_nothing_usable():
    wave = np.linspace(4000, 8000, 10)
    values, mask = resample(wave, np.ones(10), np.array([True, False] * 5), GW, min_run=4)
    assert mask.all() and np.isnan(values).all()
