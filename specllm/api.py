"""The Python API: `specllm.load_model(path=None).predict(spectra)` -> an astropy Table with the columns, units and
metadata `specllm infer` writes (`specllm.outputs`).

`predict` takes
- file paths (a path, or a list of them: FITS files of any LAMOST layout, directories, globs, array files, shards),
  read and cleaned by exactly the code `infer` uses;
- arrays `(wave, flux[, ivar, mask])`: wavelengths in Angstrom (vacuum, as LAMOST; a Quantity is converted), flux
  of one spectrum (1-D) or several on the same grid (2-D, one per row), inverse variance (None: every pixel
  usable) and a mask that is True on bad pixels, as in specutils;
- a dict (or a list of dicts) of the same arrays, `{"wave": ..., "flux": ..., "ivar": ..., "mask": ...}` (ivar and
  mask optional), with header facts where known: obsid, spec_id, ra, dec, file, objclass, subclass, z, snrg,
  snrr, snri (they are written to the row and feed the flags: `objclass` 'GALAXY' or 'QSO', a low SNR);
- a specutils `Spectrum1D`/`Spectrum` (or a list of them): spectral axis, flux, uncertainty (inverse variance,
  standard deviation or variance) and mask; `meta` keys obsid, spec_id, ra, dec are kept (the LAMOST reader of
  `specllm.io.specutils_reader` sets them, and `file`, which names the row).
Array, dict and Spectrum1D inputs are named `<array>#i` / `<dict>#i` / `<spectrum>#i` in the `file` column.
Anything else is refused with one SpecllmError line.

Without ivar and mask every pixel counts as observed: pixels the survey marks bad (inverse variance 0, ORMASK bits:
cosmic rays, bad columns, sky residuals) are then cleaned and normalised as flux, which a file's own reader masks.
The labels move accordingly: with the shipped model on the first 8 DR10 files of the shared data, Teff by up to
154 K (median 3 K), [Fe/H] by up to 0.035 dex, log g by up to 0.07 dex (docs/BENCHMARKS.md, issue 26; with ivar and
mask the labels equal the file's). Pass ivar and mask where you have them, or the file itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from .config import CleanConfig, GridConfig, InferConfig, check_ranges
from .device import pick_device
from .errors import SpecllmError
from .io import RawSpectrum
from .labelling import HEADER_COLUMNS, Item, PathList, iter_items, label_rows, output_columns, raw_item
from .outputs import rows_to_arrow, run_metadata, to_astropy
from .predict import default_model_dir, load_for_inference, model_metadata

LAYOUT = "array"


class Model:
    """A loaded model (`specllm.load_model`): `predict(spectra)` labels spectra; `columns` and `meta` describe
    the table it returns."""

    def __init__(self, path: str | os.PathLike | None = None, device=None, config: InferConfig = InferConfig()):
        if not isinstance(config, InferConfig):
            raise SpecllmError(f"config: an InferConfig is expected, not {type(config).__name__}")
        check_ranges(config)  # what the command line checks for infer's options (SpecllmError, one line)
        if path is not None and not _is_path(path):
            raise SpecllmError(f"path: a model directory is expected, not {type(path).__name__}")
        self.path = Path(path) if path else default_model_dir()
        self.device = device or pick_device()
        self.config = config
        self.models = load_for_inference(self.path, self.device, config.decode)
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


ARRAY_KEYS = ("wave", "flux", "ivar", "mask")
FACT_KEYS = ("obsid", "spec_id", "ra", "dec", "file", *HEADER_COLUMNS)
INPUTS = (
    "predict takes file paths, a (wave, flux[, ivar, mask]) tuple of arrays, a dict of them (or a list of dicts), "
    "or specutils Spectrum1D objects"
)


def dict_spectra(spectrum: dict, start: int = 0):
    """RawSpectrum per row of a dict's `flux` (see the module doc); unknown or missing keys are one clear error."""
    keys = {str(k) for k in spectrum}
    missing = [k for k in ("wave", "flux") if k not in keys]
    unknown = sorted(keys - set(ARRAY_KEYS) - set(FACT_KEYS))
    if missing or unknown:
        what = " and ".join(
            ([f"no {' or '.join(map(repr, missing))}"] if missing else [])
            + ([f"unknown key(s) {', '.join(map(repr, unknown))}"] if unknown else [])
        )
        raise SpecllmError(
            f"a spectrum dict has {what}: it takes wave and flux, optionally ivar and mask, and the header facts "
            f"{', '.join(FACT_KEYS)}"
        )
    meta = {k: spectrum[k] for k in FACT_KEYS if spectrum.get(k) is not None}
    yield from array_spectra(
        spectrum["wave"], spectrum["flux"], spectrum.get("ivar"), spectrum.get("mask"), "<dict>", meta, start
    )


def _items(spectra, grid: GridConfig, clean: CleanConfig) -> Iterator[Item]:
    if _is_path(spectra) or _is_spectrum1d(spectra) or isinstance(spectra, Mapping):
        spectra = [spectra]
    if isinstance(spectra, tuple) and spectra and not _is_path(spectra[0]) and not _is_spectrum1d(spectra[0]):
        if isinstance(spectra[0], Mapping):
            spectra = list(spectra)
        else:
            if len(spectra) > len(ARRAY_KEYS):
                raise SpecllmError(f"{INPUTS}; this tuple has {len(spectra)} members")
            yield from (raw_item(raw, grid, clean) for raw in array_spectra(*spectra))
            return
    try:
        spectra = list(spectra)
    except TypeError:
        raise SpecllmError(f"{INPUTS}, not {type(spectra).__name__}") from None
    if all(_is_path(x) for x in spectra):  # the empty list too
        yield from iter_items(PathList([str(x) for x in spectra]), grid, clean)
        return
    for is_kind, expand in ((lambda x: isinstance(x, Mapping), dict_spectra), (_is_spectrum1d, spectrum1d_spectra)):
        if all(is_kind(x) for x in spectra):
            n = 0  # the spectra are numbered on across the objects (each may hold several)
            for obj in spectra:
                for raw in expand(obj, start=n):
                    n += 1
                    yield raw_item(raw, grid, clean)
            return
    raise SpecllmError(INPUTS)


def _angstrom(wave) -> np.ndarray:
    if hasattr(wave, "unit"):
        import astropy.units as u

        return np.asarray(wave.to(u.AA, equivalencies=u.spectral()).value, dtype=np.float64)
    return np.asarray(wave, dtype=np.float64)


def _array(name: str, value, dtype, convert=None) -> np.ndarray:
    """`value` as a numpy array of `dtype`; anything that is not one (None, text, ragged lists) is one SpecllmError."""
    try:
        return convert(value) if convert is not None else np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise SpecllmError(f"{name}: not an array of numbers ({str(exc).splitlines()[0][:120]})") from None


def _fitted(name: str, values: np.ndarray, shape: tuple) -> np.ndarray:
    try:
        return np.broadcast_to(values, shape)
    except ValueError:
        raise SpecllmError(f"{name} has shape {values.shape}, flux {shape}: they must match") from None


def array_spectra(
    wave,
    flux,
    ivar=None,
    mask=None,
    name: str = "<array>",
    meta: dict | None = None,
    start: int = 0,
    layout: str = LAYOUT,
):
    """RawSpectrum per row of `flux` (1-D: one spectrum) on the wavelength grid `wave` (Angstrom); `layout` the
    file layout they were read from, where known (a LAMOST one: its header's SNR is required, as for the file)."""
    wave = _array("wave", wave, np.float64, _angstrom)
    flux = np.atleast_2d(_array("flux", getattr(flux, "value", flux), np.float64))
    if flux.ndim > 2 or wave.ndim not in (1, 2) or (wave.ndim == 2 and wave.shape != flux.shape):
        raise SpecllmError(
            f"flux is {flux.ndim}-D {flux.shape} and wave {wave.ndim}-D {wave.shape}: give flux of one spectrum (1-D) "
            "or several (2-D, one per row), and wave 1-D (shared) or of flux's shape"
        )
    if flux.shape[-1] != wave.shape[-1]:
        raise SpecllmError(f"flux has {flux.shape[-1]} pixels per spectrum, wave {wave.shape[-1]}")
    ivar = None if ivar is None else _fitted("ivar", _array("ivar", ivar, np.float64), flux.shape)
    mask = None if mask is None else _fitted("mask", _array("mask", mask, bool), flux.shape)
    meta = meta or {}
    for i in range(flux.shape[0]):
        k = start + i
        facts = {key: _nth(value, i) for key, value in meta.items()}
        path = facts.pop("file", None) or f"{name}#{k}"  # a spectrum read from a file keeps its name
        if facts.get("obsid") is None and facts.get("spec_id") is None and "#" in path:
            facts["spec_id"] = str(k)
        yield RawSpectrum(
            path=path,
            layout=layout,
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
    # header facts (LAMOST CLASS, SUBCLASS, SNR, ...) as specllm's reader puts them in meta: the same flags as a path
    meta = {k: v for k, v in (spectrum.meta or {}).items() if k in FACT_KEYS and v is not None}
    layout = (spectrum.meta or {}).get("layout") or LAYOUT  # specllm's LAMOST reader records the file's layout
    yield from array_spectra(spectrum.spectral_axis, flux, ivar, spectrum.mask, "<spectrum>", meta, start, str(layout))
