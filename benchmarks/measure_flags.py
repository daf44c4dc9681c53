"""Measures `specllm infer`'s flags (issue 15) on the shared data; figures for docs/BENCHMARKS.md.

    PYTHONPATH=$PWD python benchmarks/measure_flags.py --shared ../shared/data --out out/flags [--model DIR]

Sets (chosen by header before inference, so only the spectra a figure needs are run through the model):
- nonafg: every LAMOST spectrum in the shared data whose header is not an A/F/G star (DR1 K/M, DR7 K/M/dM/gM,
  galaxies and Unknown, DR8 K; the DR10 files with a K header are counted apart);
- dr10test: the DR10 files in the test split (the ingest hash rule on their spec_id);
- miles: the MILES stars far outside the training range (Teff < 4500 or > 12000 K, log g < 3.0 or [Fe/H] < -1.5)
  and inside it (5200-10000 K, log g >= 3.5, [Fe/H] >= -1), written to a subset npz (same keys, so read as MILES);
- snr: every file `ingest` (with the DR10 catalogue for DR10, headers elsewhere) rejects for its SNR.
Prints one Markdown table per set: the share of rows carrying any flag and each bit.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np
import pyarrow.parquet as pq
from astropy.io import fits

from specllm.config import CleanConfig, InferConfig, SplitConfig
from specllm.errors import SpectrumRejected
from specllm.flags import FLAGS, SNR_REASONS
from specllm.infer import run_infer
from specllm.splits import split_of
from specllm.io.lamost import header_meta
from specllm.io.lamost_catalog import file_key
from specllm.labels import reduce_class
from specllm.preprocess import check_snr


def lamost_files(shared: str, release: str) -> list[str]:
    return sorted(glob.glob(os.path.join(shared, "lamost", release, "**", "*.fits*"), recursive=True))


def headers(paths):
    for p in paths:
        try:
            yield p, header_meta(fits.getheader(p), "")
        except OSError:
            continue


def rates(table, label: str) -> dict:
    flag = np.array([f if f is not None else 0 for f in table.column("flag").to_pylist()])
    out = {"set": label, "n": len(flag), "any": float((flag != 0).mean()) if len(flag) else float("nan")}
    for f in FLAGS:
        out[f.keyword] = float(((flag & f.value) != 0).mean()) if len(flag) else float("nan")
    return out


def run(paths: list[str], out: str, model: str | None) -> tuple:
    t0 = time.time()
    if not os.path.exists(out):
        run_infer(paths, model, out, InferConfig())
    return pq.read_table(out), time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", default="out/flags")
    ap.add_argument("--model", default=None)
    ap.add_argument("--rejects", default="out/model-shards/rejects.parquet", help="DR10 ingest rejects (make model)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results = []

    nonafg, dr10k = [], []
    for release in ("dr1", "dr7", "dr8", "dr10", "misc"):
        for p, m in headers(lamost_files(args.shared, release)):
            if m["objclass"] is None:
                continue  # not a LAMOST low-resolution header (the medium-resolution file in misc)
            if m["objclass"].upper() != "STAR" or reduce_class(m["subclass"]) not in ("A", "F", "G"):
                (dr10k if release == "dr10" else nonafg).append(p)
    table, dt = run(nonafg + dr10k, os.path.join(args.out, "nonafg.parquet"), args.model)
    files = table.column("file").to_pylist()
    results.append(rates(table.filter(np.array([f in set(nonafg) for f in files])), "non-A/F/G (DR1, DR7, DR8, misc)"))
    results.append(rates(table.filter(np.array([f in set(dr10k) for f in files])), "DR10 files with a K header"))

    split = SplitConfig()
    test = []
    for p, m in headers(lamost_files(args.shared, "dr10")):
        sid = str(m["obsid"]) if m["obsid"] is not None else file_key(p)
        if split_of(sid, split) == "test":
            test.append(p)
    table, _ = run(test, os.path.join(args.out, "dr10test.parquet"), args.model)
    results.append(rates(table, "DR10 test split (all files)"))
    subclass = table.column("subclass").to_pylist()
    afg = np.array([reduce_class(s) in ("A", "F", "G") for s in subclass])
    results.append(rates(table.filter(afg), "DR10 test split, A/F/G headers"))

    d = np.load(os.path.join(args.shared, "miles", "miles_984stars_fwhm2.5A.npz"))
    t, g, f = d["teff"], d["logg"], d["feh"]
    known = np.isfinite(t) & np.isfinite(g) & np.isfinite(f)
    far = known & ((t < 4500) | (t > 12000) | (g < 3.0) | (f < -1.5))
    inside = known & (t >= 5200) & (t <= 10000) & (g >= 3.5) & (f >= -1)
    sub = os.path.join(args.out, "miles-buckets.npz")
    keep = far | inside
    np.savez(sub, **{k: (d[k][keep] if d[k].ndim and len(d[k]) == len(t) else d[k]) for k in d.files})
    table, _ = run([sub], os.path.join(args.out, "miles.parquet"), args.model)
    ids = table.column("spec_id").to_pylist()
    far_ids = {f"miles-{int(i):04d}" for i in d["miles_id"][far]}
    results.append(rates(table.filter(np.array([i in far_ids for i in ids])), f"MILES far outside ({far.sum()})"))
    results.append(rates(table.filter(np.array([i not in far_ids for i in ids])), f"MILES inside ({inside.sum()})"))

    # SNR: ingest's rejections (DR10 with its catalogue, as make model runs it) against infer's flag_reason.
    snr_rows = []
    if os.path.exists(args.rejects):
        rej = pq.read_table(args.rejects).to_pylist()
        snr_rows = [r for r in rej if r["reason"] in SNR_REASONS]
    others = []  # ingest without a catalogue reads the header's SNR: the same check, called here directly
    for release in ("dr1", "dr7", "dr8", "misc"):
        for p, m in headers(lamost_files(args.shared, release)):
            try:
                check_snr(m, CleanConfig())
            except SpectrumRejected:
                others.append(p)
    snr_files = sorted({r["file"] for r in snr_rows} | set(others))
    table, _ = run(snr_files, os.path.join(args.out, "snr.parquet"), args.model)
    got = dict(zip(table.column("file").to_pylist(), table.column("flag_reason").to_pylist()))
    expect = {r["file"]: r["reason"] for r in snr_rows}
    agree = sum(1 for fn, reason in expect.items() if reason in (got.get(fn) or "").split(";"))
    print(f"SNR: ingest rejects {len(expect)} DR10 files for SNR; infer flags {agree} with the same reason")
    flagged = sum(1 for fn in others if any(w in SNR_REASONS for w in (got.get(fn) or "").split(";")))
    print(f"SNR: {len(others)} DR1/DR7/DR8/misc files below the header cut; infer flags {flagged}")

    cols = ["set", "n", "any", *[f.keyword for f in FLAGS]]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r[c]) if c in ("set", "n") else f"{100 * r[c]:.1f}%" for c in cols) + " |")
    with open(os.path.join(args.out, "summary.json"), "w") as fh:
        json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
