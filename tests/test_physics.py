"""Wavelength and resolution conventions (specllm.physics): air -> vacuum, broadening to a resolving power."""

from __future__ import annotations

import numpy as np
import pytest

from specllm.physics import air_to_vacuum, broaden


def test_air_to_vacuum_matches_known_lines():
    # H-alpha 6562.80 A (air) = 6564.61 A (vacuum); Ca II K 3933.66 -> 3934.78
    np.testing.assert_allclose(air_to_vacuum(np.array([6562.80, 3933.66])), [6564.61, 3934.78], atol=0.02)


def test_broaden_reaches_lamost_resolution_only_where_the_source_is_sharper():
    wave = 3600.0 + 0.9 * np.arange(4300)
    flux = np.zeros_like(wave)
    red, blue = np.argmin(np.abs(wave - 7000)), np.argmin(np.abs(wave - 3900))
    flux[red] = flux[blue] = 1.0
    out, _ = broaden(wave, flux, None, 2.5, 1800.0, 4.0)
    window = slice(red - 40, red + 41)
    w, f = wave[window], out[window]
    sigma = np.sqrt(np.sum(f * (w - np.sum(f * w) / f.sum()) ** 2) / f.sum())
    expected = np.sqrt((7000 / 1800) ** 2 - 2.5**2) / 2.3548
    assert sigma == pytest.approx(expected, rel=0.1)
    assert out[blue] == pytest.approx(1.0)  # at 3900 A, lambda/R = 2.2 A < 2.5 A: left as it is


def test_broaden_keeps_missing_pixels_missing_and_propagates_ivar():
    wave = 3600.0 + 0.9 * np.arange(2000)
    flux = np.ones_like(wave)
    flux[1000] = np.nan
    ivar = np.full(wave.size, 100.0)
    out, out_ivar = broaden(wave, flux, ivar, 1.0, 1800.0, 4.0)
    assert np.isnan(out[1000]) and np.allclose(out[np.isfinite(out)], 1.0)
    assert out_ivar.shape == wave.shape and (out_ivar[:900] > 100.0).all()  # averaging lowers the noise


def test_band_indices_measure_a_band_against_its_local_continuum():
    from specllm.physics import BAND_INDICES, band_indices

    wave = 3800.0 + np.arange(4901.0)
    names = list(BAND_INDICES)
    tio5 = names.index("TiO5")
    band = (wave >= air_to_vacuum(np.array([7126.0]))[0]) & (wave <= air_to_vacuum(np.array([7135.0]))[0])
    sloped = np.tile(np.linspace(0.4, 1.0, wave.size), (3, 1))  # a slope alone: ~0 between two windows
    sloped[1, band] *= 0.5  # a TiO band absorbing half the flux: +0.75 mag
    mask = np.zeros_like(sloped, bool)
    mask[2, band] = True  # the same spectrum as row 1, its band unobserved
    sloped[2] = sloped[1]
    out = band_indices(sloped, wave, mask)
    two_sided = [j for j, (_, blue, red) in enumerate(BAND_INDICES.values()) if blue != red]  # CaH/TiO5: one window
    assert len(two_sided) == 17 and np.abs(out[0, two_sided]).max() < 0.01
    assert out[1, tio5] - out[0, tio5] == pytest.approx(2.5 * np.log10(2.0), abs=0.01)
    assert np.isnan(out[2, tio5]) and np.isfinite(np.delete(out[2], tio5)).all()
