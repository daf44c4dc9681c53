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
