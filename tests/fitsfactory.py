"""Small LAMOST-like FITS files and catalogues written by the tests themselves, plus ready-made shards.

Importable from any test module (`from .fitsfactory import make_shards`):

- `log_grid()`: the LAMOST log-linear wavelength grid, 10 ** (3.5682 + 1e-4 * i), 3909 pixels (3700-9100 A).
- `stellar_flux(wave, teff)`: a smooth, positive, star-like spectrum (Planck continuum times a smooth instrument
  response, with Balmer, Ca II H&K, Mg b, Na D and Ca triplet absorption lines whose depths vary with teff).
- `write_dr1`, `write_image`, `write_coadd` (or `write_spectrum(path, layout, ...)`): the three low-resolution
  layouts (DR1 image with COEFF0/COEFF1; DR2-DR8 five-row image; DR8 v2+ COADD table); `.gz` names are gzipped.
- `write_medium_resolution`, `write_sdss`: files that must be recognised and rejected.
- `write_catalog(path, rows)`: a CSV label catalogue.
- `make_dataset(directory, n)`: n spectra of classes A/F/G/K/M over the three layouts, and their catalogue rows.
- `make_shards(tmp_path, n)`: `make_dataset` + `specllm.ingest.run_ingest` -> a shard directory with labels
  (teff, logg, feh, class, split), about 10 ms a spectrum.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

COEFF0 = 3.5682
COEFF1 = 1e-4
NPIX = 3909
BANDS = ("u", "g", "r", "i", "z")

# (vacuum wavelength A, width sigma A, depth at 5800 K, how the depth scales with teff: "balmer" or "metal")
LINES = (
    (3934.8, 6.0, 0.55, "metal"),  # Ca II K
    (3969.6, 6.0, 0.45, "metal"),  # Ca II H
    (4102.9, 5.0, 0.30, "balmer"),  # H delta
    (4341.7, 5.0, 0.30, "balmer"),  # H gamma
    (4862.7, 5.0, 0.30, "balmer"),  # H beta
    (5176.7, 3.0, 0.25, "metal"),  # Mg b
    (5891.6, 2.0, 0.25, "metal"),  # Na D2
    (5897.6, 2.0, 0.20, "metal"),  # Na D1
    (6564.6, 5.0, 0.35, "balmer"),  # H alpha
    (8500.4, 3.0, 0.20, "metal"),  # Ca triplet
    (8544.4, 3.0, 0.25, "metal"),
    (8664.5, 3.0, 0.22, "metal"),
)
# Typical stars per class: subclass, teff, logg, feh.
CLASS_STARS = {
    "A": ("A5", 8000.0, 4.1, -0.2),
    "F": ("F5", 6500.0, 4.2, -0.3),
    "G": ("G2", 5750.0, 4.4, 0.0),
    "K": ("K3", 4700.0, 4.6, 0.1),
    "M": ("dM2", 3600.0, 4.8, -0.1),
}


def log_grid(n: int = NPIX, coeff0: float = COEFF0, coeff1: float = COEFF1) -> np.ndarray:
    """The LAMOST low-resolution wavelength grid (vacuum A), float64."""
    return 10.0 ** (coeff0 + coeff1 * np.arange(n, dtype=np.float64))


def stellar_flux(
    wave: np.ndarray, teff: float = 5800.0, scale: float = 1000.0, noise: float = 0.0, seed: int = 0
) -> np.ndarray:
    """A smooth star-like spectrum in LAMOST-like counts (float32, positive, maximum about `scale`)."""
    lam = np.asarray(wave, dtype=np.float64) * 1e-10
    planck = 1.0 / (lam**5 * np.expm1(1.4388e-2 / (lam * teff)))
    response = np.exp(-0.5 * ((wave - 6000.0) / 2500.0) ** 2)  # throughput falls towards both ends
    flux = planck * response
    flux /= flux.max()
    for centre, sigma, depth, kind in LINES:
        factor = np.clip((9500.0 - teff) / 3700.0, 0.2, 2.0) if kind == "metal" else np.clip(teff / 7000.0, 0.3, 1.5)
        flux *= 1.0 - min(depth * factor, 0.9) * np.exp(-0.5 * ((wave - centre) / sigma) ** 2)
    flux = scale * flux
    if noise:
        flux = flux + np.random.default_rng(seed).normal(0.0, noise * scale, flux.shape)
    return flux.astype(np.float32)


def _snr_dict(snr) -> dict:
    if snr is None:
        return {}
    if isinstance(snr, dict):
        return snr
    if np.isscalar(snr):
        return dict.fromkeys(BANDS, float(snr))
    return dict(zip(BANDS, snr, strict=False))


def _arrays(wave, flux, ivar, ormask, andmask, teff):
    wave = log_grid() if wave is None else np.asarray(wave, dtype=np.float64)
    flux = stellar_flux(wave, teff) if flux is None else np.asarray(flux, dtype=np.float32)
    ivar = np.full(wave.shape, 0.01, np.float32) if ivar is None else np.asarray(ivar, dtype=np.float32)
    ormask = np.zeros(wave.shape, np.float32) if ormask is None else np.asarray(ormask, dtype=np.float32)
    andmask = np.zeros(wave.shape, np.float32) if andmask is None else np.asarray(andmask, dtype=np.float32)
    return wave, flux, ivar, ormask, andmask


def _header(*, obsid, data_release, objclass, subclass, snr_keys, snr, ra, dec, z, filename, extra) -> fits.Header:
    h = fits.Header()
    if filename:
        h["FILENAME"] = filename
    if obsid is not None:
        h["OBSID"] = obsid
    h["AUTHOR"] = "LAMOST Pipeline"
    if data_release:
        h["DATA_V"] = data_release
    h["TELESCOP"] = "LAMOST"
    h["RA"], h["DEC"] = ra, dec
    h["CLASS"] = objclass
    h["SUBCLASS"] = subclass
    h["Z"] = z
    for band, value in _snr_dict(snr).items():
        h[snr_keys.format(band.upper())] = value
    for key, value in (extra or {}).items():
        h[key] = value
    return h


def _write(hdul: fits.HDUList, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hdul.writeto(path, overwrite=True)  # astropy gzips names ending in .gz
    return path


def write_image(
    path,
    *,
    obsid: int | None = 101001,
    subclass: str = "G2",
    objclass: str = "STAR",
    snr=(10.0, 40.0, 60.0, 70.0, 50.0),
    ra: float = 332.3687,
    dec: float = -1.9558,
    z: float = 8.7e-5,
    teff: float = 5750.0,
    wave=None,
    flux=None,
    ivar=None,
    ormask=None,
    andmask=None,
    data_release: str = "LAMOST DR7",
    extra: dict | None = None,
) -> Path:
    """DR2-DR8 v1 layout: primary image (5, N) = flux, ivar, wavelength, andmask, ormask; OBSID, SNRU..SNRZ."""
    wave, flux, ivar, ormask, andmask = _arrays(wave, flux, ivar, ormask, andmask, teff)
    h = _header(
        obsid=obsid, data_release=data_release, objclass=objclass, subclass=subclass, snr_keys="SNR{}", snr=snr,
        ra=ra, dec=dec, z=z, filename=Path(path).name.replace(".gz", ""), extra=extra,
    )  # fmt: skip
    h["COEFF0"], h["COEFF1"] = COEFF0, COEFF1
    h["EXTEN0"] = "Flux, Inverse, Wavelength, Andmask, Ormask"
    data = np.stack([flux, ivar, wave.astype(np.float32), andmask, ormask]).astype(np.float32)
    return _write(fits.HDUList([fits.PrimaryHDU(data, header=h)]), path)


def write_dr1(
    path,
    *,
    subclass: str = "F9",
    objclass: str = "STAR",
    snr=(14.0, 71.4, 99.0, 99.0, 99.0),
    ra: float = 99.3163,
    dec: float = 27.2324,
    z: float = -7.1e-5,
    teff: float = 6000.0,
    n: int = 3904,
    coeff0: float = COEFF0,
    coeff1: float = COEFF1,
    flux=None,
    ivar=None,
    ormask=None,
    andmask=None,
    extra: dict | None = None,
) -> Path:
    """DR1 layout: primary image (5, N) = flux, ivar, normalised flux, andmask, ormask; COEFF0/COEFF1; SN_U..SN_Z;
    no OBSID and no DATA_V keyword."""
    wave = log_grid(n, coeff0, coeff1)
    wave, flux, ivar, ormask, andmask = _arrays(wave, flux, ivar, ormask, andmask, teff)
    h = _header(
        obsid=None, data_release=None, objclass=objclass, subclass=subclass, snr_keys="SN_{}", snr=snr,
        ra=ra, dec=dec, z=z, filename=Path(path).name.replace(".gz", ""), extra=extra,
    )  # fmt: skip
    h["COEFF0"], h["COEFF1"] = coeff0, coeff1
    h["EXTEN0"] = "Flux Inverse Subcontinuum Andmask Ormask"
    data = np.stack([flux, ivar, flux / np.median(flux), andmask, ormask]).astype(np.float32)
    return _write(fits.HDUList([fits.PrimaryHDU(data, header=h)]), path)


def write_coadd(
    path,
    *,
    obsid: int | None = 937808200,
    subclass: str = "G3",
    objclass: str = "STAR",
    snr=(5.0, 13.1, 29.4, 35.0, 30.0),
    ra: float = 44.7382,
    dec: float = 7.4781,
    z: float = -2.9e-4,
    teff: float = 5600.0,
    wave=None,
    flux=None,
    ivar=None,
    ormask=None,
    andmask=None,
    data_release: str = "LAMOST DR10",
    extra: dict | None = None,
) -> Path:
    """DR8 v2+ layout: empty primary HDU with the keywords, then a one-row BinTable COADD with array columns."""
    wave, flux, ivar, ormask, andmask = _arrays(wave, flux, ivar, ormask, andmask, teff)
    h = _header(
        obsid=obsid, data_release=data_release, objclass=objclass, subclass=subclass, snr_keys="SNR{}", snr=snr,
        ra=ra, dec=dec, z=z, filename=Path(path).name.replace(".gz", ""), extra=extra,
    )  # fmt: skip
    n = wave.size
    columns = [
        fits.Column(name=name, format=f"{n}E", array=values[None, :].astype(np.float32))
        for name, values in (
            ("FLUX", flux),
            ("IVAR", ivar),
            ("WAVELENGTH", wave),
            ("ANDMASK", andmask),
            ("ORMASK", ormask),
            ("NORMALIZATION", np.ones(n, np.float32)),
        )
    ]
    table = fits.BinTableHDU.from_columns(columns, name="COADD")
    return _write(fits.HDUList([fits.PrimaryHDU(header=h), table]), path)


WRITERS = {"dr1": write_dr1, "image": write_image, "coadd": write_coadd}


def write_spectrum(path, layout: str, **kwargs) -> Path:
    """`layout` is 'dr1', 'image' or 'coadd' (see the writers)."""
    return WRITERS[layout](path, **kwargs)


def write_medium_resolution(path) -> Path:
    """A LAMOST medium-resolution-like file: primary header + COADD_B / COADD_R tables (plus per-exposure HDUs)."""
    h = fits.Header()
    h["FILENAME"] = "med-58408-TD230151N343645T01_sp01-015.fits"
    h["OBSID"] = 678015015
    h["TELESCOP"] = "LAMOST"
    hdus = [fits.PrimaryHDU(header=h)]
    for band, start in (("B", 4950.0), ("R", 6300.0)):
        wave = np.linspace(start, start + 350.0, 2000)
        cols = [
            fits.Column(name="FLUX", format="2000E", array=np.ones((1, 2000), np.float32)),
            fits.Column(name="IVAR", format="2000E", array=np.ones((1, 2000), np.float32)),
            fits.Column(name="WAVELENGTH", format="2000D", array=wave[None, :]),
            fits.Column(name="ORMASK", format="2000E", array=np.zeros((1, 2000), np.float32)),
        ]
        hdus.append(fits.BinTableHDU.from_columns(cols, name=f"COADD_{band}"))
    return _write(fits.HDUList(hdus), path)


def write_sdss(path) -> Path:
    """An SDSS-like spectrum: primary header with TELESCOP = 'SDSS 2.5-M', a COADD table of flux/loglam/ivar rows
    and a SPECOBJ table."""
    h = fits.Header()
    h["TELESCOP"] = "SDSS 2.5-M"
    h["PLATEID"] = 266
    n = 3800
    loglam = 3.5793 + 1e-4 * np.arange(n)
    coadd = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="flux", format="E", array=stellar_flux(10**loglam) / 100.0),
            fits.Column(name="loglam", format="E", array=loglam.astype(np.float32)),
            fits.Column(name="ivar", format="E", array=np.ones(n, np.float32)),
            fits.Column(name="and_mask", format="J", array=np.zeros(n, np.int32)),
            fits.Column(name="or_mask", format="J", array=np.zeros(n, np.int32)),
        ],
        name="COADD",
    )
    specobj = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="PLATE", format="J", array=np.array([266])),
            fits.Column(name="CLASS", format="6A", array=np.array(["STAR"])),
        ],
        name="SPECOBJ",
    )
    return _write(fits.HDUList([fits.PrimaryHDU(header=h), coadd, specobj]), path)


def write_catalog(path, rows: Sequence[dict], columns: Iterable[str] | None = None) -> Path:
    """A CSV catalogue; `columns` defaults to the keys of the first row. None values are written empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(columns or rows[0].keys())
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return path


def make_dataset(
    directory,
    n: int = 20,
    *,
    layouts: Sequence[str] = ("coadd", "image", "dr1"),
    classes: Sequence[str] = ("A", "F", "G", "K", "M"),
    gz: bool = True,
    seed: int = 0,
    first_obsid: int = 900000001,
) -> list[dict]:
    """Write n spectra to `directory` (classes and layouts in turn, labels jittered per star) and return one catalogue
    row per spectrum: filename, obsid, subclass, snrg, snrr, snri, teff, logg, feh, ra, dec, and the layout.

    DR1 files carry no OBSID: the catalogue still gives one, the join for them goes by file name.
    """
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    wave = log_grid()
    rows = []
    for i in range(n):
        cls = classes[i % len(classes)]
        layout = layouts[i % len(layouts)]
        subclass, teff0, logg0, feh0 = CLASS_STARS[cls]
        teff = float(np.round(teff0 + rng.normal(0, 150), 2))
        logg = float(np.round(logg0 + rng.normal(0, 0.1), 3))
        feh = float(np.round(feh0 + rng.normal(0, 0.2), 3))
        obsid = first_obsid + i
        snr = np.round(rng.uniform(20, 120, 5), 2)
        name = f"spec-{layout}-{obsid}.fits" + (".gz" if gz else "")
        common = dict(
            subclass=subclass, snr=tuple(snr), ra=float(rng.uniform(0, 360)), dec=float(rng.uniform(-10, 60)), teff=teff
        )
        if layout == "dr1":
            write_dr1(directory / name, **common)
        else:
            flux = stellar_flux(wave, teff, noise=0.01, seed=seed * 100003 + i)
            WRITERS[layout](directory / name, obsid=obsid, flux=flux, **common)
        rows.append(
            dict(
                filename=name, obsid=obsid, subclass=subclass, snrg=snr[1], snrr=snr[2], snri=snr[3],
                teff=teff, logg=logg, feh=feh, ra=common["ra"], dec=common["dec"], layout=layout,
            )
        )  # fmt: skip
    return rows


CATALOG_COLUMNS = ("filename", "obsid", "subclass", "snrg", "snrr", "snri", "teff", "logg", "feh", "ra", "dec")


def make_shards(
    tmp_path,
    n: int = 20,
    *,
    layouts: Sequence[str] = ("coadd", "image", "dr1"),
    classes: Sequence[str] = ("A", "F", "G", "K", "M"),
    shard_size: int = 512,
    seed: int = 0,
    name: str = "shards",
    config=None,
) -> Path:
    """Write n small spectra + a CSV catalogue under `tmp_path` and ingest them; returns the shard directory.

    Every spectrum is kept (n rows), with teff, logg, feh from the catalogue, class A/F/G/K/M (classes in turn) and
    the split column. `config` (an IngestConfig) overrides shard_size.
    """
    from specllm.config import IngestConfig
    from specllm.ingest import run_ingest

    tmp_path = Path(tmp_path)
    spectra = tmp_path / f"{name}-fits"
    rows = make_dataset(spectra, n, layouts=layouts, classes=classes, seed=seed)
    catalog = write_catalog(tmp_path / f"{name}-catalog.csv", rows, CATALOG_COLUMNS)
    out = tmp_path / name
    run_ingest([str(spectra)], str(out), str(catalog), config or IngestConfig(shard_size=shard_size))
    return out


# ---------------------------------------------------------------- hostile files (issue 24)


def write_gzip_bomb(path, inflated_mb: int, head: bytes | None = None) -> Path:
    """A `.fits.gz` of a valid-looking FITS header (`head`, default: a COADD spectrum's first two blocks) followed by
    zeros, `inflated_mb` MB in all once inflated; gzip shrinks zeros ~1000:1, so the file is ~inflated_mb KB."""
    if head is None:
        head = gzip.decompress(write_coadd(Path(str(path) + ".src.fits.gz")).read_bytes())[: 2 * 2880]
        os.unlink(str(path) + ".src.fits.gz")
    zeros = bytes(2**20)
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(head)
        for _ in range(inflated_mb):
            fh.write(zeros)
    return Path(path)


def set_card(fits_bytes: bytes, key: str, value: str, after: bytes = b"") -> bytes:
    """`fits_bytes` with the first card `key` (after the first occurrence of `after`) set to `value` (raw text,
    right-aligned in columns 11-30 as FITS fixed format writes numbers)."""
    start = fits_bytes.find(after) if after else 0
    name = key.encode().ljust(8)
    for i in range(start - start % 80, len(fits_bytes), 80):
        if fits_bytes[i : i + 8] == name and fits_bytes[i + 8 : i + 10] == b"= ":
            card = (name + b"= " + value.encode().rjust(20)).ljust(80)
            return fits_bytes[:i] + card + fits_bytes[i + 80 :]
    raise KeyError(key)


def write_declared_naxis2(path, naxis2: int = 10**9) -> Path:
    """A DR10-style COADD file whose table header declares NAXIS2 = `naxis2` rows (the data holds one)."""
    src = write_coadd(Path(str(path) + ".src.fits"))
    data = set_card(src.read_bytes(), "NAXIS2", str(naxis2), after=b"XTENSION")
    os.unlink(src)
    Path(path).write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)
    return Path(path)
