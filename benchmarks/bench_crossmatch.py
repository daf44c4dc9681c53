"""Benchmark of `specllm crossmatch`: time and peak memory.

Part `core`: the positions-only matching core (`SkyIndex` + `match`: KD-tree build, nearest and second-nearest
neighbour, ties) for N synthetic spectrum positions against M catalogue rows, uniform on the sphere; half the spectra
are catalogue stars displaced by up to 1.5 arcsec, half are random positions.
Part `full`: `run_crossmatch` end to end on spectrum shards with the real 4901-pixel grid against an allStar-like
Parquet catalogue of M rows with every APOGEE label and flag column (reading, cuts, matching, rewriting the shards).

Each part runs in its own process so that its peak resident memory (ru_maxrss) is its own.
Results are printed on stdout as JSON lines; progress on stderr.

    nice -n 10 python benchmarks/bench_crossmatch.py --n 1000000 --catalog 1000000 --shards 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SEED = 20260101


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime  # all threads of this process


def sphere(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    return ra, dec


def spectra_positions(rng, cat_ra, cat_dec, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half near catalogue stars (within 1.5"), half random; returns ra, dec and the true row (-1 for random)."""
    from astropy.coordinates import SkyCoord

    half = n // 2
    truth = np.full(n, -1, np.int64)
    truth[:half] = (
        rng.choice(len(cat_ra), half, replace=False) if half <= len(cat_ra) else rng.integers(0, len(cat_ra), half)
    )
    c = SkyCoord(cat_ra[truth[:half]], cat_dec[truth[:half]], unit="deg").directional_offset_by(
        rng.uniform(0, 2 * np.pi, half), np.deg2rad(rng.uniform(0, 1.5, half) / 3600)
    )
    ra_r, dec_r = sphere(rng, n - half)
    return np.concatenate([c.ra.deg, ra_r]), np.concatenate([c.dec.deg, dec_r]), truth


def part_core(n: int, m: int, radius: float) -> dict:
    from specllm.crossmatch import SkyIndex

    rng = np.random.default_rng(SEED)
    cat_ra, cat_dec = sphere(rng, m)
    ra, dec, truth = spectra_positions(rng, cat_ra, cat_dec, n)
    before = rss_mib()
    t0, c0 = time.perf_counter(), cpu_seconds()
    index = SkyIndex(cat_ra, cat_dec)
    result = index.match(ra, dec, radius)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    near = truth >= 0
    return {
        "part": "core",
        "spectra": n,
        "catalog_rows": m,
        "radius_arcsec": radius,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "spectra_per_second": round(n / seconds),
        "load_average_1min": os.getloadavg()[0],
        "peak_rss_mib": round(rss_mib(), 1),
        "peak_rss_above_inputs_mib": round(rss_mib() - before, 1),
        "matched": int((result.index >= 0).sum()),
        "recovered_true_row": int((result.index[near] == truth[near]).sum()),
        "displaced_copies": int(near.sum()),
        "ambiguous": int(result.ambiguous.sum()),
    }


def _write_catalog(path: str, rng, cat_ra, cat_dec) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from specllm.config import STAGE2_ELEMENTS

    m = len(cat_ra)
    cols = {
        "APOGEE_ID": pa.array([f"2M{i:08d}+{i % 10000000:07d}" for i in range(m)]),
        "RA": cat_ra,
        "DEC": cat_dec,
        "ASPCAPFLAG": (rng.random(m) < 0.2).astype(np.int64) << 23,
        "TEFF": rng.normal(4800, 500, m).astype(np.float32),
        "LOGG": rng.normal(2.5, 1.0, m).astype(np.float32),
        "FE_H": rng.normal(-0.2, 0.3, m).astype(np.float32),
    }
    for el in STAGE2_ELEMENTS:
        v = rng.normal(0.0, 0.1, m).astype(np.float32)
        v[rng.random(m) < 0.05] = -9999.99
        cols[f"{el}_FE"] = v
        cols[f"{el}_FE_FLAG"] = (rng.random(m) < 0.1).astype(np.int32)
    pq.write_table(pa.table(cols), path, compression="zstd")


def _write_shards(folder: str, rng, ra, dec, per_shard: int, grid: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from specllm.ingest import shard_schema
    from specllm.shards import vectors_to_arrow

    schema = shard_schema(None, grid)
    scalar = pa.schema([f for f in schema if f.name not in ("flux", "mask")])
    classes = np.array(["A", "F", "G", "K", "M"])
    for k in range(0, len(ra), per_shard):
        n = min(per_shard, len(ra) - k)
        rows = [
            {
                "spec_id": str(k + i),
                "obsid": k + i,
                "ra": float(ra[k + i]),
                "dec": float(dec[k + i]),
                "class": str(classes[(k + i) % 5]),
                "split": "train",
            }
            for i in range(n)
        ]
        table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in scalar} for r in rows], schema=scalar)
        flux = np.round(rng.random((n, grid), dtype=np.float32), 3)
        mask = rng.random((n, grid)) < 0.02
        table = table.append_column(schema.field("flux"), vectors_to_arrow(flux, pa.float32()))
        table = table.append_column(schema.field("mask"), vectors_to_arrow(mask, pa.bool_()))
        pq.write_table(table, os.path.join(folder, f"part-{k // per_shard:05d}.parquet"), compression="zstd")


def make_full_inputs(folder: str, m: int, shards: int, per_shard: int) -> None:
    from specllm.config import GridConfig

    rng = np.random.default_rng(SEED)
    cat_ra, cat_dec = sphere(rng, m)
    ra, dec, _ = spectra_positions(rng, cat_ra, cat_dec, shards * per_shard)
    _write_catalog(os.path.join(folder, "allStar-like.parquet"), rng, cat_ra, cat_dec)
    os.makedirs(os.path.join(folder, "shards"))
    _write_shards(os.path.join(folder, "shards"), rng, ra, dec, per_shard, GridConfig().size)


def part_full(folder: str, radius: float) -> dict:
    """Measured in a process that did not write the inputs, so its peak memory is the crossmatch's own."""
    from specllm.config import CrossmatchConfig, GridConfig
    from specllm.crossmatch import run_crossmatch
    from specllm.io.surveys import read_survey
    from specllm.shards import shard_paths

    catalog = os.path.join(folder, "allStar-like.parquet")
    src = os.path.join(folder, "shards")
    paths = shard_paths(src)
    size = sum(os.path.getsize(p) for p in paths)
    t0, c0 = time.perf_counter(), cpu_seconds()
    cat = read_survey(catalog, "apogee")
    t_read, c_read = time.perf_counter() - t0, cpu_seconds() - c0
    rss_catalog = rss_mib()
    del cat
    t0, c0 = time.perf_counter(), cpu_seconds()
    result = run_crossmatch(
        src, os.path.join(folder, "out"), {"apogee": catalog}, CrossmatchConfig(radius_arcsec=radius)
    )
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    n = result.spectra
    return {
        "part": "full",
        "spectra": n,
        "shards": len(paths),
        "grid": GridConfig().size,
        "input_mib": round(size / 2**20, 1),
        "catalog_rows": result.stats["apogee"]["catalog_rows"],
        "catalog_read_seconds": round(t_read, 2),
        "catalog_read_cpu_seconds": round(c_read, 2),
        "peak_rss_after_catalog_read_mib": round(rss_catalog, 1),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "load_average_1min": os.getloadavg()[0],
        "spectra_per_second_excluding_catalog_read": round(n / max(seconds - t_read, 1e-9)),
        "input_mib_per_second_excluding_catalog_read": round(size / 2**20 / max(seconds - t_read, 1e-9), 1),
        "peak_rss_mib": round(rss_mib(), 1),
        "matched": result.stats["apogee"]["matched"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="spectrum positions (core part)")
    ap.add_argument("--catalog", type=int, default=1_000_000, help="catalogue rows")
    ap.add_argument("--shards", type=int, default=8, help="spectrum shards (full part)")
    ap.add_argument("--per-shard", type=int, default=512)
    ap.add_argument("--radius", type=float, default=None, help="arcsec (default: CrossmatchConfig)")
    ap.add_argument("--part", choices=["core", "full", "both", "make", "measure"], default="both")
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.radius is None:
        from specllm.config import CrossmatchConfig

        args.radius = CrossmatchConfig().radius_arcsec

    def child(part: str, *extra: str) -> None:
        cmd = [sys.executable, __file__, "--part", part, "--n", str(args.n), "--catalog", str(args.catalog)]
        cmd += ["--shards", str(args.shards), "--per-shard", str(args.per_shard), "--radius", str(args.radius)]
        subprocess.run(cmd + list(extra), check=True)

    if args.part in ("both", "full"):
        if args.part == "both":
            child("core")
        with tempfile.TemporaryDirectory(prefix="bench-crossmatch-") as tmp:
            child("make", "--dir", tmp)
            child("measure", "--dir", tmp)
        return
    if args.part == "make":
        make_full_inputs(args.dir, args.catalog, args.shards, args.per_shard)
        return
    out = part_core(args.n, args.catalog, args.radius) if args.part == "core" else part_full(args.dir, args.radius)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
