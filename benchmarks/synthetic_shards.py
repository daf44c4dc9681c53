"""Synthetic hot stars for training (issue 22): the real ingest shards plus Cannon-model spectra made LAMOST-like on
real train-split continua (`specllm.synthetic`), as an ingest-format shard folder that `specllm serialize` takes.

    pip download thedoppler==1.1.32 --no-deps --no-binary :all: -d /work/cache/thedoppler   # the sdist, not installed
    D=/work/cache/thedoppler/thedoppler-1.1.32/doppler/data
    python benchmarks/synthetic_shards.py --cannon $D/cannongrid_3000_18000_coolstars_norm_cubic_model.pkl \\
        --cannon $D/cannongrid_3000_18000_hotdwarfs_norm_cubic_model.pkl --real out/model-shards --n 500 \\
        --teff-min 7000 --teff-max 15000 --out out/synth-shards [--check out/synth-check.png]
    specllm serialize out/synth-shards --stage 1 --format patch --out out/synth-qa

--check PNG: for the three real train stars nearest 8,500, 9,500 and 10,500 K, the synthetic spectrum at their
catalogue labels (noiseless, on the continuum of the nearest *other* donor) against the real one; prints the RMS
difference on the normalised grid (stdout, JSON) and saves an overlay. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from specllm.config import GridConfig
from specllm.errors import SpecllmError
from specllm.shards import read_table, verified_shard_paths
from specllm.synthetic import Donors, Generator, SyntheticConfig, load_cannon, nearest_model, write_synthetic_shards


def _rms(real: np.ndarray, synth: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    """RMS of real - synthetic on the pixels `ok`, as normalised and after the best single scale factor (the real
    spectrum's maximum, which sets its normalisation, carries its noise; the noiseless synthetic's does not)."""
    r, s = real[ok].astype(np.float64), synth[ok].astype(np.float64)
    scale = float(np.dot(r, s) / np.dot(s, s))
    return float(np.sqrt(np.mean((r - s) ** 2))), float(np.sqrt(np.mean((r - scale * s) ** 2)))


def check(real: str, cannons: list[str], cfg: SyntheticConfig, png: str, targets=(8500.0, 9500.0, 10500.0)) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [load_cannon(p) for p in cannons]
    grid = GridConfig()
    donors = Donors(read_table(verified_shard_paths(real)), cfg, grid)
    gen = Generator(models, donors, cfg, grid)
    gw = grid.wavelengths()
    rng = np.random.default_rng(cfg.seed)
    rows = []
    fig, axes = plt.subplots(len(targets), 1, figsize=(12, 3.2 * len(targets)), sharex=True)
    for ax, target in zip(np.atleast_1d(axes), targets):
        i = int(donors.nearest(target, 1)[0])
        others = [j for j in donors.nearest(donors.teff[i], 2) if j != i]
        donor = others[0]
        near = nearest_model(gen.models, donors.labels[i])  # a catalogue label just outside: its nearest edge
        labels = np.clip(donors.labels[i], near.ranges[:, 0], near.ranges[:, 1])
        snr = {b: donors.snr[b][i] for b in "ugriz"}
        cleaned, model = gen.spectrum(labels, donor, snr, rng, noise=False)
        self_cleaned, _ = gen.spectrum(labels, i, snr, rng, noise=False)
        real_flux, real_mask = donors.flux[i], donors.mask[i]
        rms, rms_scaled = _rms(real_flux, cleaned.flux, ~real_mask & ~cleaned.mask)
        rms_self, rms_self_scaled = _rms(real_flux, self_cleaned.flux, ~real_mask & ~self_cleaned.mask)
        row = {
            "spec_id": str(donors.spec_id[i]),
            "catalogue": [float(v) for v in donors.labels[i]],
            "teff": float(labels[0]),
            "logg": float(labels[1]),
            "feh": float(labels[2]),
            "model": model.name,
            "donor": str(donors.spec_id[donor]),
            "donor_teff": float(donors.teff[donor]),
            "snr_g": float(snr["g"]),
            "rms": rms,
            "rms_scaled": rms_scaled,
            "rms_own_continuum": rms_self,
            "rms_own_continuum_scaled": rms_self_scaled,
        }
        rows.append(row)
        ax.plot(gw, real_flux, lw=0.6, color="k", label=f"real {row['spec_id']} (SNR_g {snr['g']:.0f})")
        ax.plot(
            gw, cleaned.flux, lw=0.6, color="C3", label=f"synthetic, donor {row['donor']} ({row['donor_teff']:.0f} K)"
        )
        ax.plot(gw, self_cleaned.flux, lw=0.6, color="C0", alpha=0.7, label="synthetic, its own continuum")
        ax.set_title(
            f"Teff {labels[0]:.0f} K, log g {labels[1]:.2f}, [Fe/H] {labels[2]:.2f} ({model.name.split('_')[3]}): "
            f"RMS {rms:.3f}, scaled {rms_scaled:.3f} (own continuum {rms_self:.3f}, scaled {rms_self_scaled:.3f})",
            fontsize=9,
        )
        ax.set_ylabel("flux / max")
        ax.legend(fontsize=7, loc="lower right")
    np.atleast_1d(axes)[-1].set_xlabel("vacuum wavelength (A, observed frame)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"saved {png}", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cannon", action="append", required=True, help="Cannon model pickle (repeat; first match wins)")
    ap.add_argument("--real", required=True, help="the real ingest shard folder")
    ap.add_argument("--out", help="output shard folder (real rows + synthetic rows)")
    ap.add_argument("--n", type=int, default=SyntheticConfig.n)
    ap.add_argument("--teff-min", type=float, default=SyntheticConfig.teff_range[0])
    ap.add_argument("--teff-max", type=float, default=SyntheticConfig.teff_range[1])
    ap.add_argument("--logg-min", type=float, default=SyntheticConfig.logg_range[0])
    ap.add_argument("--logg-max", type=float, default=SyntheticConfig.logg_range[1])
    ap.add_argument("--feh-min", type=float, default=SyntheticConfig.feh_range[0])
    ap.add_argument("--feh-max", type=float, default=SyntheticConfig.feh_range[1])
    ap.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    ap.add_argument("--snr-source", choices=("train", "donor"), default=SyntheticConfig.snr_source)
    ap.add_argument("--resolution", type=float, default=SyntheticConfig.resolution)
    ap.add_argument("--check", metavar="PNG", help="also write the real-vs-synthetic sanity figure here")
    args = ap.parse_args(argv)
    cfg = SyntheticConfig(
        n=args.n,
        teff_range=(args.teff_min, args.teff_max),
        logg_range=(args.logg_min, args.logg_max),
        feh_range=(args.feh_min, args.feh_max),
        seed=args.seed,
        snr_source=args.snr_source,
        resolution=args.resolution,
    )
    try:
        if args.out:
            manifest = write_synthetic_shards(args.real, args.cannon, args.out, cfg)
            print(
                f"{args.out}: {manifest['counts']['rows copied']} rows copied + {manifest['counts']['synthetic added']} synthetic rows added",
                file=sys.stderr,
            )
        if args.check:
            print(json.dumps(check(args.real, args.cannon, cfg, args.check), indent=1))
    except SpecllmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
