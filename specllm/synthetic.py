"""Synthetic LAMOST-like spectra of labelled stars from Cannon spectral models (issue 22: the hot stars the real
training set lacks). Used only at training-data time, by `benchmarks/synthetic_shards.py` and its test; no runtime
path (infer, api, cli) imports it.

Source: the two Cannon models that the MIT-licensed `thedoppler` sdist ships as pickles (`doppler/data/cannongrid_*`:
normalised flux at 0.1 A, 3,000-18,000 A, air wavelengths, unconvolved; cool stars 3,500-8,000 K, hot dwarfs
8,000-40,000 K). `load_cannon` reads such a pickle with an unpickler that admits numpy arrays and nothing else (the
pickle is a plain dict written by `thecannon.CannonModel.write`; class names appear in it only as strings), and
`CannonModel` evaluates it exactly as thecannon 0.2.9x / doppler do:

    scaled = (labels - fiducials) / scales, fiducials = median of the training labels,
             scales = ptp of their 2.5th and 97.5th percentiles (both recomputed from `training_set_labels`);
    label vector = [1] + [prod_(i, p) in term scaled[i] ** p for term in vectorizer terms] (terms stored in the pickle);
    flux = min(theta @ label vector, 1)  (doppler clips the "spikes" above the continuum).

To LAMOST: air -> vacuum, Gaussian broadening to R~1800, the donor's redshift, LAMOST's log-linear pixels, then a
continuum (see `Donors.continuum`: the "continuum transplant" from a real TRAIN spectrum of similar Teff, tilted by
the ratio of black bodies), photon-like noise at a real spectrum's SNR, the donor's masked pixels, and
`preprocess.clean_spectrum`, the pipeline's own normalisation and resampling onto the common grid.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import os
import pickle
import shutil
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import constants
from scipy.ndimage import gaussian_filter1d, median_filter

from .config import ArrayConfig, CleanConfig, GridConfig, SplitConfig
from .errors import SpecllmError, one_line
from .labels import CLASSES
from .physics import air_to_vacuum, broaden
from .preprocess import clean_spectrum
from .shards import (
    arrow_to_vectors,
    exclusive_output,
    integrity_fields,
    publish,
    read_manifest,
    read_table,
    staged_output,
    vectors_to_arrow,
    verified_shard_paths,
    write_table,
)
from .splits import is_validation

SYNTHETIC_SPLIT = "synthetic"
SIDECAR = "synthetic.parquet"  # one row per synthetic spectrum: its labels, Cannon model, donor and SNR

# numpy's pickle globals, under numpy 1 (numpy.core) and numpy 2 (numpy._core) names: all that an array needs with
# pickle protocol 3 (thedoppler's pickles) to 5 (`_frombuffer`). Protocol 2 writes array bytes through
# `_codecs.encode`, which is not admitted: such a pickle is refused, naming it.
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


def _numpy_global(module: str, name: str):
    if module == "numpy":
        return getattr(np, name)
    submodule = module.rpartition(".")[2]
    try:  # numpy >= 2 keeps numpy.core only as a deprecated alias
        return getattr(importlib.import_module(f"numpy._core.{submodule}"), name)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{submodule}"), name)


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain Python containers, and refuses every other global."""

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return _numpy_global(module, name)
        raise SpecllmError(f"refused pickle global {one_line(module)}.{one_line(name)}: only numpy arrays are loaded")

    def persistent_load(self, pid):
        raise SpecllmError("refused pickle persistent id: only numpy arrays are loaded")


def load_pickle_arrays(path: str | os.PathLike):
    """A pickle of dicts, lists, tuples, numbers, strings and numpy arrays; anything else -> SpecllmError."""
    try:
        with open(path, "rb") as fh:
            return _ArraysOnly(io.BufferedReader(fh), encoding="latin1").load()
    except SpecllmError as exc:
        raise SpecllmError(f"{one_line(path)}: {exc}") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise SpecllmError(f"{one_line(path)}: not a readable pickle ({one_line(exc)})") from None


# ---------------------------------------------------------------- the Cannon model


@dataclass
class CannonModel:
    """A trained Cannon model as a plain holder of its arrays (no thecannon / doppler import)."""

    name: str  # the pickle's file name
    theta: np.ndarray  # (pixels, terms) spectral coefficients
    dispersion: np.ndarray  # (pixels,) wavelengths in A (air unless `vacuum`)
    terms: list  # label-vector terms: each a list of (label index, power); the constant term 1 is implied first
    label_names: tuple  # ('TEFF', 'LOGG', 'FEH')
    fiducials: np.ndarray  # (labels,) median of the training labels
    scales: np.ndarray  # (labels,) ptp of the 2.5th and 97.5th percentiles of the training labels
    ranges: np.ndarray  # (labels, 2) min and max of the training labels (doppler: where the model applies)
    fwhm: float  # the model's own line spread, A (0.001: unconvolved)
    vacuum: bool  # wavelengths in vacuum (False for thedoppler's models: air)

    @classmethod
    def from_state(cls, state: dict, name: str) -> CannonModel:
        """From the dict thecannon's `CannonModel.write` pickles (version >= 0.2)."""
        try:
            labels = np.asarray(state["training_set_labels"])
            vec_class, vec_kwds = state["vectorizer"]
            theta = np.asarray(state["theta"], dtype=np.float64)
            dispersion = np.asarray(state["dispersion"], dtype=np.float64)
            label_names = tuple((state.get("censors") or {}).get("label_names") or vec_kwds.get("label_names") or ())
            terms = [[(int(i), float(p)) for i, p in term] for term in vec_kwds["terms"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecllmError(f"{name}: not a Cannon model pickle (missing or bad {one_line(exc)})") from None
        if vec_class != "PolynomialVectorizer":
            raise SpecllmError(f"{name}: vectorizer {one_line(vec_class)} is not supported (PolynomialVectorizer only)")
        if theta.ndim != 2 or theta.shape != (dispersion.size, len(terms) + 1) or labels.ndim != 2:
            raise SpecllmError(
                f"{name}: theta {theta.shape} does not match {dispersion.size} pixels, {len(terms)}+1 terms"
            )
        # thecannon computes these in the training labels' own dtype (float32 here), then uses them as they are
        fiducials = np.percentile(labels, 50, axis=0)
        scales = np.ptp(np.percentile(labels, [2.5, 97.5], axis=0), axis=0)
        ranges = np.stack([labels.min(axis=0), labels.max(axis=0)], axis=1).astype(np.float64)
        return cls(
            name=name,
            theta=theta,
            dispersion=dispersion,
            terms=terms,
            label_names=label_names,
            fiducials=np.asarray(fiducials),
            scales=np.asarray(scales),
            ranges=ranges,
            fwhm=float(state.get("fwhm") or 0.0),
            vacuum=bool(state.get("wavevac") or False),
        )

    def label_vector(self, labels) -> np.ndarray:
        """(n, terms) label vectors of (n, labels) raw labels (thecannon's PolynomialVectorizer on scaled labels)."""
        scaled = (np.atleast_2d(np.asarray(labels, dtype=np.float64)) - self.fiducials) / self.scales
        columns = [np.ones(scaled.shape[0])]
        for term in self.terms:
            column = np.ones(scaled.shape[0])
            for index, power in term:
                column = column * scaled[:, index] ** power
            columns.append(column)
        return np.stack(columns, axis=1)

    def __call__(self, labels) -> np.ndarray:
        """Normalised flux on `dispersion` for one set of labels (1-d) or several (2-d, one row each)."""
        flux = np.minimum(self.label_vector(labels) @ self.theta.T, 1.0)
        return flux[0] if np.ndim(labels) == 1 else flux

    def covers(self, labels) -> bool:
        labels = np.asarray(labels, dtype=np.float64)
        return bool(np.all((labels >= self.ranges[:, 0]) & (labels <= self.ranges[:, 1])))

    def trimmed(self, lo: float, hi: float) -> CannonModel:
        """The pixels within [lo, hi] A only (a LAMOST spectrum needs 3,700-9,100 A of the 3,000-18,000 A)."""
        keep = (self.dispersion >= lo) & (self.dispersion <= hi)
        return dataclasses.replace(self, theta=self.theta[keep], dispersion=self.dispersion[keep])


def load_cannon(path: str | os.PathLike) -> CannonModel:
    """A Cannon model pickle (thedoppler's `cannongrid_*.pkl`), read with numpy arrays admitted and nothing else."""
    state = load_pickle_arrays(path)
    if not isinstance(state, dict):
        raise SpecllmError(f"{one_line(path)}: not a Cannon model pickle (a {type(state).__name__}, not a dict)")
    return CannonModel.from_state(state, os.path.basename(str(path)))


def pick_model(models: list[CannonModel], labels) -> CannonModel | None:
    """The first model whose training ranges hold `labels` (doppler's `get_best_model`), else None."""
    return next((m for m in models if m.covers(labels)), None)


def nearest_model(models: list[CannonModel], labels) -> CannonModel:
    """`pick_model`, else the model whose ranges are nearest in scaled labels (for a donor, whose labels are clipped)."""
    chosen = pick_model(models, labels)
    if chosen is not None:
        return chosen
    labels = np.asarray(labels, dtype=np.float64)

    def distance(m: CannonModel) -> float:
        return float(np.sum(((labels - np.clip(labels, m.ranges[:, 0], m.ranges[:, 1])) / m.scales) ** 2))

    return min(models, key=distance)


# ---------------------------------------------------------------- to LAMOST


@dataclass(frozen=True)
class SyntheticConfig:
    """What `benchmarks/synthetic_shards.py` generates, and how the spectra are made LAMOST-like."""

    n: int = 500
    """Number of synthetic spectra."""
    teff_range: tuple[float, float] = (7000.0, 15000.0)
    """Teff drawn uniformly in this range (K); the Cannon models given must cover it."""
    logg_range: tuple[float, float] = (3.5, 4.5)
    """log g drawn uniformly in this range (dex; real LAMOST A stars: mostly 3.5-4.5; hot model: 2.5-5)."""
    feh_range: tuple[float, float] = (-1.0, 0.3)
    """[Fe/H] drawn uniformly in this range (dex; real LAMOST A stars: mostly -1..+0.3; hot model: -2.5..+0.5)."""
    seed: int = 0
    """Seed of every random draw (labels, donors, SNR, noise): the same seed gives the same shards."""
    snr_source: str = "train"
    """'train': the SNR (u..z) of a random real train-split donor-eligible spectrum; 'donor': the donor's own SNR."""
    snr_clip: tuple[float, float] = (5.0, 300.0)
    """The g and r SNR used for the noise are clipped to this range (the catalogue caps some at 999)."""
    resolution: float | None = ArrayConfig.match_resolution
    """Resolving power the Cannon flux is broadened to (LAMOST LRS: ~1800)."""
    kernel_sigmas: float = ArrayConfig.kernel_sigmas
    """The broadening kernel is cut at this many sigma."""
    bin_pixels: int = 5
    """The 0.1 A model is averaged over this many pixels before broadening (0.5 A: ~4x finer than R~1800's sigma)."""
    lamost_log_step: float = 1e-4
    """LAMOST LRS pixels: log10-linear at this step (69 km/s)."""
    donors_per_star: int = 5
    """A synthetic star's donor is drawn from the real spectra of the nearest Teff, this many of them."""
    class_neighbours: int = 15
    """A synthetic star's class is the majority class of this many real train spectra nearest in Teff."""
    continuum_median_px: int = 75
    """Donor continuum: median filter width (grid pixels, 1 A each) over the donor/model ratio ..."""
    continuum_smooth_px: float = 20.0
    """... then a Gaussian smoothing of this sigma (grid pixels)."""
    line_depth_cut: float = 0.3
    """Donor continuum: pixels where the model at the donor's labels is below this (deep line cores) are skipped."""


def check_coverage(models: list[CannonModel], cfg: SyntheticConfig) -> None:
    """Every label box corner, at every 50 K of the Teff range, lies within one of the models: else SpecllmError."""
    (t0, t1), (g0, g1), (f0, f1) = cfg.teff_range, cfg.logg_range, cfg.feh_range
    if not (t0 <= t1 and g0 <= g1 and f0 <= f1):
        raise SpecllmError(f"empty label range in {cfg.teff_range}, {cfg.logg_range}, {cfg.feh_range}")
    for t in np.unique(np.append(np.arange(t0, t1, 50.0), t1)):
        for g in (g0, g1):
            for f in (f0, f1):
                if pick_model(models, (t, g, f)) is None:
                    raise SpecllmError(
                        f"no Cannon model given ({', '.join(m.name for m in models)}) covers Teff {t:.0f} K, "
                        f"log g {g:g}, [Fe/H] {f:g}; give a --cannon for that range or narrow the ranges"
                    )


def to_lamost(model: CannonModel, flux: np.ndarray, z: float, cfg: SyntheticConfig, native: np.ndarray) -> np.ndarray:
    """Normalised model flux (on `model.dispersion`) -> vacuum, broadened to `cfg.resolution`, shifted by redshift
    `z`, sampled at the LAMOST-like pixels `native` (vacuum A)."""
    wave = model.dispersion if model.vacuum else air_to_vacuum(model.dispersion)
    k = max(1, int(cfg.bin_pixels))
    m = (wave.size // k) * k
    wave, flux = wave[:m].reshape(-1, k).mean(axis=1), flux[:m].reshape(-1, k).mean(axis=1)
    if cfg.resolution:
        fwhm_in = float(np.hypot(model.fwhm, k * np.median(np.diff(model.dispersion)) / 2.0))  # the bin adds ~k/2 px
        flux, _ = broaden(wave, flux, None, fwhm_in, cfg.resolution, cfg.kernel_sigmas)
    return np.interp(native, wave * (1.0 + z), flux)


def lamost_pixels(grid: GridConfig, step: float) -> np.ndarray:
    """LAMOST-like log-linear pixels just covering the grid (with a margin for the cubic resampling)."""
    lo, hi = np.log10(grid.start - 5.0), np.log10(grid.stop + 5.0)
    return 10.0 ** np.arange(lo, hi + step, step)


def blackbody_ratio(wave_a: np.ndarray, t_new: float, t_old: float) -> np.ndarray:
    """B_lambda(t_new) / B_lambda(t_old) at the wavelengths (A)."""
    x = constants.h * constants.c / (np.asarray(wave_a) * 1e-10 * constants.k)
    return np.expm1(x / t_old) / np.expm1(x / t_new)


def _fill_masked(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    index = np.arange(values.size)
    return np.interp(index, index[ok], values[ok]) if ok.any() else np.ones_like(values)


class Donors:
    """The real spectra a synthetic one borrows from: the TRAIN split only, without its validation part
    (`splits.is_validation`), so no validation or test spectrum leaks into training."""

    def __init__(self, table: pa.Table, cfg: SyntheticConfig, grid: GridConfig):
        split = SplitConfig()
        ids = table.column("spec_id").to_pylist()
        splits = table.column("split").to_pylist()
        teff = np.asarray(table.column("teff").to_numpy(zero_copy_only=False), dtype=np.float64)
        keep = np.array(
            [s == "train" and not is_validation(str(i), split) and np.isfinite(t) for i, s, t in zip(ids, splits, teff)]
        )
        if not keep.any():
            raise SpecllmError("no real train-split spectrum (outside validation) with a Teff to take a continuum from")
        self.table = table.filter(pa.array(keep))
        self.cfg, self.grid = cfg, grid
        col = self.table.column
        self.spec_id = np.asarray(col("spec_id").to_pylist())
        self.teff = np.asarray(col("teff").to_numpy(zero_copy_only=False), dtype=np.float64)
        self.labels = np.stack(
            [self.teff]
            + [np.asarray(col(c).to_numpy(zero_copy_only=False), dtype=np.float64) for c in ("logg", "feh")],
            axis=1,
        )
        self.z = np.nan_to_num(np.asarray(col("z").to_numpy(zero_copy_only=False), dtype=np.float64))
        self.snr = {b: np.asarray(col(f"snr{b}").to_numpy(zero_copy_only=False), np.float64) for b in "ugriz"}
        self.cls = col("class").to_pylist()
        self.flux = arrow_to_vectors(col("flux"), np.float32)
        self.mask = arrow_to_vectors(col("mask"), bool)
        self._continua: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.spec_id.size

    def nearest(self, teff: float, k: int) -> np.ndarray:
        """Indices of the k donors nearest in Teff (above the real range: the hottest ones)."""
        return np.argsort(np.abs(self.teff - teff), kind="stable")[:k]

    def class_for(self, teff: float) -> str | None:
        """The majority class of the real train spectra nearest in Teff: the catalogue's own usage (its hottest
        rows, up to ~13,400 K, are all subclass A1, so hotter synthetic stars are 'A' too)."""
        votes = [self.cls[i] for i in self.nearest(teff, self.cfg.class_neighbours) if self.cls[i] in CLASSES]
        return max(sorted(set(votes)), key=votes.count) if votes else None

    def continuum(self, i: int, native: np.ndarray, models: list[CannonModel]) -> np.ndarray:
        """Donor i's smooth continuum on the grid (its normalised flux, max 1): its flux divided by the Cannon model
        at its own catalogue labels (clipped into the model's ranges) made LAMOST-like the same way, deep line cores
        and masked pixels skipped, then a median filter and a Gaussian smoothing. Dividing by the model, rather than
        taking an upper envelope, keeps the broad Balmer wings of hot stars out of the continuum."""
        if i in self._continua:
            return self._continua[i]
        cfg = self.cfg
        labels = self.labels[i]
        model = nearest_model(models, labels)
        clipped = np.clip(np.nan_to_num(labels, nan=float(np.median(model.ranges))), *model.ranges.T)
        gw = self.grid.wavelengths()
        shape = np.interp(gw, native, to_lamost(model, model(clipped), self.z[i], cfg, native))
        ok = ~self.mask[i] & (shape > cfg.line_depth_cut) & np.isfinite(self.flux[i])
        ratio = _fill_masked(self.flux[i] / np.where(shape > 0, shape, 1.0), ok)
        smooth = gaussian_filter1d(
            median_filter(ratio, size=cfg.continuum_median_px, mode="nearest"), cfg.continuum_smooth_px, mode="nearest"
        )
        self._continua[i] = np.clip(smooth, 1e-3, None)
        return self._continua[i]


@dataclass
class Synthetic:
    row: dict  # shard columns (labels, class, split, SNR, ...) except flux and mask
    flux: np.ndarray  # grid, normalised as the pipeline does
    mask: np.ndarray  # grid, True where filled
    info: dict = field(default_factory=dict)  # the sidecar row: model, donor, SNR used


class Generator:
    """Synthetic spectra at given labels, each on a real donor's continuum (see the module docstring)."""

    def __init__(
        self,
        models: list[CannonModel],
        donors: Donors,
        cfg: SyntheticConfig,
        grid: GridConfig = GridConfig(),
        clean: CleanConfig = CleanConfig(),
    ):
        self.cfg, self.grid, self.clean, self.donors = cfg, grid, clean, donors
        self.native = lamost_pixels(grid, cfg.lamost_log_step)
        lo, hi = self.native[0] / 1.01, self.native[-1] * 1.01  # room for air->vacuum, redshift, the kernel
        self.models = [m.trimmed(lo, hi) for m in models]

    def spectrum(self, labels, donor: int, snr: dict, rng: np.random.Generator, noise: bool = True):
        """(`preprocess.Cleaned`, model used) for one star at `labels` on donor `donor`'s continuum; `noise=False`:
        the noiseless spectrum (the ivar still follows `snr`)."""
        labels = np.asarray(labels, dtype=np.float64)
        model = pick_model(self.models, labels)
        if model is None:
            raise SpecllmError(f"no Cannon model given covers Teff/logg/[Fe/H] = {labels.tolist()}")
        d = self.donors
        z = float(d.z[donor])
        norm_flux = to_lamost(model, model(labels), z, self.cfg, self.native)
        gw = self.grid.wavelengths()
        cont = np.interp(self.native, gw, d.continuum(donor, self.native, self.models))
        cont *= blackbody_ratio(self.native / (1.0 + z), labels[0], float(np.clip(d.teff[donor], 2500.0, None)))
        flux = norm_flux * cont
        lo, hi = self.cfg.snr_clip
        snr_g = float(np.clip(np.nan_to_num(snr.get("g"), nan=lo), lo, hi))
        snr_r = float(np.clip(np.nan_to_num(snr.get("r"), nan=snr_g), lo, hi))
        snr_at = np.interp(self.native, [4686.0, 6166.0], [snr_g, snr_r])  # SDSS g, r effective wavelengths
        sigma = np.sqrt(np.clip(flux, 0.0, None) * cont) / snr_at  # photon-like: SNR = snr_at on the continuum
        sigma = np.maximum(sigma, 1e-6 * cont.max())
        if noise:
            flux = flux + rng.normal(0.0, 1.0, flux.size) * sigma
        ormask = np.interp(self.native, gw, d.mask[donor].astype(np.float64)) > 0.5  # the donor's masked pixels
        cleaned = clean_spectrum(self.native, flux, 1.0 / sigma**2, ormask.astype(np.int32), self.grid, self.clean)
        return cleaned, model

    def draw(self, n: int, rng: np.random.Generator | None = None, start: int = 0) -> list[Synthetic]:
        """n synthetic stars with labels drawn from the config's ranges."""
        cfg = self.cfg
        rng = rng or np.random.default_rng(cfg.seed)
        check_coverage(self.models, cfg)
        d = self.donors
        out = []
        for k in range(n):
            labels = np.array([rng.uniform(*cfg.teff_range), rng.uniform(*cfg.logg_range), rng.uniform(*cfg.feh_range)])
            donor = int(rng.choice(d.nearest(labels[0], cfg.donors_per_star)))
            src = donor if cfg.snr_source == "donor" else int(rng.integers(len(d)))
            snr = {b: d.snr[b][src] for b in "ugriz"}
            cleaned, model = self.spectrum(labels, donor, snr, rng)
            sid = f"synth-{start + k}"
            row = {
                "spec_id": sid,
                "layout": "synthetic",
                "z": float(d.z[donor]),
                "objclass": "STAR",
                "class": d.class_for(labels[0]),
                **{f"snr{b}": (None if not np.isfinite(v) else float(v)) for b, v in snr.items()},
                "teff": float(labels[0]),
                "logg": float(labels[1]),
                "feh": float(labels[2]),
                "split": SYNTHETIC_SPLIT,
                "coverage": cleaned.coverage,
                "norm": cleaned.norm,
            }
            info = {
                "spec_id": sid,
                "model": model.name,
                "donor": str(d.spec_id[donor]),
                "donor_teff": float(d.teff[donor]),
                "snr_g": snr["g"],
                "snr_r": snr["r"],
            }
            out.append(Synthetic(row=row, flux=cleaned.flux, mask=cleaned.mask, info=info))
        return out


# ---------------------------------------------------------------- shards


def _synthetic_table(items: list[Synthetic], schema: pa.Schema) -> pa.Table:
    scalar = pa.schema([f for f in schema if f.name not in ("flux", "mask")])
    table = pa.Table.from_pylist([{f.name: s.row.get(f.name) for f in scalar} for s in items], schema=scalar)
    size = schema.field("flux").type.list_size
    flux = np.stack([s.flux for s in items]) if items else np.zeros((0, size), np.float32)
    mask = np.stack([s.mask for s in items]) if items else np.zeros((0, size), bool)
    table = table.append_column(schema.field("flux"), vectors_to_arrow(flux.astype(np.float32), pa.float32()))
    return table.append_column(schema.field("mask"), vectors_to_arrow(mask, pa.bool_()))


@exclusive_output("out")
def write_synthetic_shards(
    real: str, cannons: list[str], out: str, cfg: SyntheticConfig, rows_per_shard: int = 1000, verify: bool = True
) -> dict:
    """An ingest-format shard folder `out`: every shard of the real ingest folder `real` (copied byte for byte) plus
    `cfg.n` synthetic rows (split 'synthetic', spec_id 'synth-<k>') in shards of their own after them, and a
    sidecar `synthetic.parquet`; sealed with a manifest `verified_shard_paths` accepts. Returns the manifest."""
    if os.path.abspath(real) == os.path.abspath(out):
        raise SpecllmError("--out must differ from the real shard folder")
    paths = verified_shard_paths(real, verify)
    manifest = read_manifest(real) or {}
    if manifest.get("kind", "spectra") != "spectra":
        raise SpecllmError(f"{one_line(real)}: not ingest shards (kind {manifest.get('kind')!r})")
    table = read_table(paths)
    g = manifest.get("grid") or {}
    grid = GridConfig(**{k: g[k] for k in ("start", "stop", "step") if k in g})
    if table.schema.field("flux").type.list_size != grid.size:
        raise SpecllmError(
            f"{one_line(real)}: flux has {table.schema.field('flux').type.list_size} values, grid {grid.size}"
        )
    c = manifest.get("clean") or {}
    clean = CleanConfig(**{k: c[k] for k in (f.name for f in dataclasses.fields(CleanConfig)) if k in c})
    models = [load_cannon(p) for p in cannons]
    donors = Donors(table, cfg, grid)
    gen = Generator(models, donors, cfg, grid, clean)
    # Chained runs (a folder of this function's as `real`): the new rows are numbered on after the synthetic ones
    # already there, and the provenance lists every run.
    items = gen.draw(cfg.n, start=table.column("split").to_pylist().count("synthetic"))
    earlier = manifest.get("synthetic") or []
    with staged_output(out, "synthetic") as staging:
        names = []
        for p in paths:
            names.append(os.path.basename(p))
            shutil.copyfile(p, os.path.join(staging, names[-1]))
        first = 1 + max((int(n[5:10]) for n in names if n[5:10].isdigit()), default=-1)
        for k in range(0, len(items), rows_per_shard):
            names.append(f"part-{first + k // rows_per_shard:05d}.parquet")
            write_table(os.path.join(staging, names[-1]), _synthetic_table(items[k : k + rows_per_shard], table.schema))
        info = [s.info for s in items]
        if os.path.exists(os.path.join(real, SIDECAR)):  # a chained run: the earlier runs' rows first
            info = pq.read_table(os.path.join(real, SIDECAR)).to_pylist() + info
        write_table(os.path.join(staging, SIDECAR), pa.Table.from_pylist(info))
        new = {
            key: manifest[key]
            for key in ("specllm", "kind", "grid", "clean", "split", "balance", "catalog", "schema")
            if key in manifest
        }
        new["kind"] = "spectra"
        new["counts"] = {"rows copied": table.num_rows, "synthetic added": len(items)}
        new["synthetic"] = [
            *(earlier if isinstance(earlier, list) else [earlier]),
            {
                "config": dataclasses.asdict(cfg),
                "cannon": [os.path.basename(p) for p in cannons],
                "real": os.path.abspath(real),
                "sidecar": SIDECAR,
            },
        ]
        new |= integrity_fields(staging, names)
        publish(staging, out, new)
    return new
