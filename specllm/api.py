"""The Python API: `specllm.load_model(path=None).predict(spectra)` -> an astropy Table with the columns, units and
metadata `specllm infer` writes (`specllm.outputs`).

`predict` takes
- file paths (a path, or a list of them: FITS files of any LAMOST layout, directories, globs, array files, shards),
  read and cleaned by exactly the code `infer` uses;
- arrays `(wave, flux[, ivar, mask])`: wavelengths in Angstrom (vacuum, as LAMOST; a Quantity is converted), flux
  of one spectrum (1-D) or several on the same grid (2-D, one per row), inverse variance (None: every pixel
  usable) and a mask that is True on bad pixels, as in specutils;
- a specutils `Spectrum1D`/`Spectrum` (or a list of them): spectral axis, flux, uncertainty (inverse variance,
  standard deviation or variance) and mask; `meta` keys obsid, spec_id, ra, dec are kept (the LAMOST reader of
  `specllm.io.specutils_reader` sets them, and `file`, which names the row).
Array and Spectrum1D inputs are named `<array>#i` / `<spectrum>#i` in the `file` column.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .config import CleanConfig, GridConfig, InferConfig
from .device import pick_device
from .errors import SpecllmError
from .infer import Item, PathList, iter_items, label_rows, output_columns, raw_item
from .io import RawSpectrum
from .outputs import rows_to_arrow, run_metadata, to_astropy
from .predict import default_model_dir, load_for_inference, model_metadata

LAYOUT = "array"


class Model:
    """A loaded model (`specllm.load_model`): `predict(spectra)` labels spectra; `columns` and `meta` describe
    the table it returns."""

    def __init__(self, path: str | os.PathLike | None = None, device=None, config: InferConfig = InferConfig()):
        self.path = Path(path) if path else default_model_dir()
        self.device = device or pick_device()
        self.config = config
        self.models = load_for_inference(self.path, self.device)
        self.columns = output_columns([m.spec for m in self.models])
        self.model_meta = model_metadata(self.path, name=str(path) if path else "default")

    def __repr__(self) -> str:
        spec = self.models[-1].spec
        return f"<specllm model {self.model_meta['model']}: stage {spec.stage}, labels {', '.join(spec.value_names)}>"

    def predict(self, spectra, *, grid: GridConfig = GridConfig(), clean: CleanConfig | None = None):
        """Labels for `spectra` (paths, `(wave, flux[, ivar, mask])` arrays, or Spectrum1D; see the module doc),
        one row per spectrum in order, as an astropy Table with units and the run's metadata. `clean`: ingest's
        cleaning (default: infer's, `InferConfig.clean`)."""
        items = _items(spectra, grid, clean or self.config.clean)
        rows = [row for _, row in label_rows(items, self.models, self.device, self.config)]
        meta = run_metadata(self.model_meta, command=f"specllm.load_model({self.model_meta['model']!r}).predict")
        return to_astropy(rows_to_arrow(rows, self.columns), meta)


def load_model(path: str | os.PathLike | None = None, device=None) -> Model:
    """The model at `path` (a model or training-run directory; None: the model shipped with specllm)."""
    return Model(path, device)


# ---------------------------------------------------------------- inputs


def _is_path(x) -> bool:
    return isinstance(x, str | os.PathLike)


def _is_spectrum1d(x) -> bool:
    return hasattr(x, "spectral_axis") and hasattr(x, "flux")


def _items(spectra, grid: GridConfig, clean: CleanConfig) -> Iterator[Item]:
    if _is_path(spectra):
        spectra = [spectra]
    if _is_spectrum1d(spectra):
        spectra = [spectra]
    if isinstance(spectra, tuple) and spectra and not _is_path(spectra[0]) and not _is_spectrum1d(spectra[0]):
        yield from (raw_item(raw, grid, clean) for raw in array_spectra(*spectra))
        return
    spectra = list(spectra)
    if all(_is_path(x) for x in spectra):
        yield from iter_items(PathList([str(x) for x in spectra]), grid, clean)
        return
    if all(_is_spectrum1d(x) for x in spectra):
        n = 0
        for s in spectra:
            for raw in spectrum1d_spectra(s, start=n):
                n += 1
                yield raw_item(raw, grid, clean)
        return
    raise SpecllmError(
        "predict takes file paths, a (wave, flux[, ivar, mask]) tuple of arrays, or specutils Spectrum1D objects"
    )


def _angstrom(wave) -> np.ndarray:
    if hasattr(wave, "unit"):
        import astropy.units as u

        return np.asarray(wave.to(u.AA, equivalencies=u.spectral()).value, dtype=np.float64)
    return np.asarray(wave, dtype=np.float64)


def array_spectra(wave, flux, ivar=None, mask=None, name: str = "<array>", meta: dict | None = None, start: int = 0):
    """RawSpectrum per row of `flux` (1-D: one spectrum) on the wavelength grid `wave` (Angstrom)."""
    wave = _angstrom(wave)
    flux = np.atleast_2d(np.asarray(getattr(flux, "value", flux), dtype=np.float64))
    if flux.shape[-1] != wave.shape[-1]:
        raise SpecllmError(f"flux has {flux.shape[-1]} pixels per spectrum, wave {wave.shape[-1]}")
    ivar = None if ivar is None else np.broadcast_to(np.asarray(ivar, dtype=np.float64), flux.shape)
    mask = None if mask is None else np.broadcast_to(np.asarray(mask, dtype=bool), flux.shape)
    meta = meta or {}
    for i in range(flux.shape[0]):
        k = start + i
        facts = {key: _nth(value, i) for key, value in meta.items()}
        path = facts.pop("file", None) or f"{name}#{k}"  # a spectrum read from a file keeps its name
        if facts.get("obsid") is None and facts.get("spec_id") is None and "#" in path:
            facts["spec_id"] = str(k)
        yield RawSpectrum(
            path=path,
            layout=LAYOUT,
            wave=wave if wave.ndim == 1 else wave[i],
            flux=flux[i],
            ivar=None if ivar is None else ivar[i],
            ormask=None if mask is None else mask[i].astype(np.int32),
            meta=facts,
        )


def _nth(value, i: int):
    if isinstance(value, list | tuple | np.ndarray):
        return value[i]
    return value


def spectrum1d_spectra(spectrum, start: int = 0):
    """RawSpectrum per spectrum of a specutils Spectrum1D (1-D or 2-D flux)."""
    flux = np.asarray(spectrum.flux.value, dtype=np.float64)
    ivar = None
    unc = getattr(spectrum, "uncertainty", None)
    if unc is not None:
        kind = type(unc).__name__
        arr = np.asarray(unc.array, dtype=np.float64)
        with np.errstate(divide="ignore"):
            if kind == "InverseVariance":
                ivar = arr
            elif kind == "StdDevUncertainty":
                ivar = np.where(arr > 0, 1.0 / arr**2, 0.0)
            elif kind == "VarianceUncertainty":
                ivar = np.where(arr > 0, 1.0 / arr, 0.0)
    meta = {k: v for k, v in (spectrum.meta or {}).items() if k in ("obsid", "spec_id", "ra", "dec", "file")}
    yield from array_spectra(spectrum.spectral_axis, flux, ivar, spectrum.mask, "<spectrum>", meta, start)
