"""Measures `specllm infer`'s flags (issues 15 and 23) on the shared data; figures for docs/BENCHMARKS.md.

    PYTHONPATH=$PWD python benchmarks/measure_flags.py --shared ../shared/data --out out/flags [--model DIR]

Sets (chosen by header or catalogue before inference, so only the spectra a figure needs are run through the model;
none of them is used to fit anything: the check is fitted by `specllm fit-domain` on the train split alone):
- nonafg: every LAMOST spectrum in the shared data whose header is not an A/F/G star (DR1 K/M, DR7 K/M/dM/gM,
  galaxies and Unknown, DR8 K; the DR10 files with a K header are counted apart);
- blanked: the M stars (dM, gM, M0-M2...), galaxies and Unknowns among them with CLASS and SUBCLASS blanked in a copy
  of the file (only the model's own check can see them);
- dr10test: the DR10 files in the test split (the ingest hash rule on their spec_id), unseen by the model, and
  among their A/F/G rows those far off the catalogue (|dTeff| > 1000 K, |dlog g| > 1 or |d[Fe/H]| > 0.75);
- miles: the MILES stars outside the training labels' range (Teff < 4000 K, log g < 0.8 or [Fe/H] < -2.5) and well
  inside it (5200-10000 K, log g >= 3.5, [Fe/H] >= -1), written to a subset npz (same keys, so read as MILES);
- snr: every file `ingest` (with the DR10 catalogue for DR10, headers elsewhere) rejects for its SNR;
- ways: every shared non-A/F/G file through the CLI, `predict(path)` and `predict(Spectrum.read(path))`.
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
from specllm.io.lamost import header_meta
from specllm.io.lamost_catalog import file_key
from specllm.labels import reduce_class
from specllm.metrics import FAR_OFF
from specllm.metrics import far_off as is_far_off
from specllm.preprocess import check_snr
from specllm.splits import split_of


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
    usable = table.column("usable").to_pylist() if "usable" in table.column_names else [None] * len(flag)
    out["usable"] = float(np.mean([bool(u) for u in usable])) if len(flag) else float("nan")
    for f in FLAGS:
        out[f.keyword] = float(((flag & f.value) != 0).mean()) if len(flag) else float("nan")
    return out


def run(paths: list[str], out: str, model: str | None) -> tuple:
    t0 = time.time()
    if not os.path.exists(out):
        run_infer(paths, model, out, InferConfig())
    return pq.read_table(out), time.time() - t0


def blank_headers(paths: list[str], folder: str) -> list[str]:
    """Copies of `paths` with CLASS and SUBCLASS blanked in every header (the spectrum untouched)."""
    os.makedirs(folder, exist_ok=True)
    out = []
    for p in paths:
        target = os.path.join(folder, os.path.basename(p))
        with fits.open(p) as hdul:
            for hdu in hdul:
                for key in ("CLASS", "SUBCLASS"):
                    if key in hdu.header:
                        hdu.header[key] = ""
            hdul.writeto(target, overwrite=True)
        out.append(target)
    return out


def far_off(table, catalog: str) -> dict:
    """Among rows with catalogue labels: how many are far off, flagged, and far off while unflagged / usable."""
    import csv

    with open(catalog, newline="") as fh:
        labels = {r["filename"]: r for r in csv.DictReader(fh)}
    far = flagged = far_unflagged = unflagged = far_unusable = 0
    n = 0
    for r in table.to_pylist():
        ref = labels.get(os.path.basename(r["file"]))
        if ref is None or r["status"] != "ok" or reduce_class(ref["subclass"]) not in ("A", "F", "G"):
            continue
        n += 1
        names = list(FAR_OFF)
        catalogue = [[np.nan if ref[k] in ("", None) else float(ref[k]) for k in names]]
        off = bool(is_far_off(np.array([[float(r[k]) for k in names]]), np.array(catalogue), names)[0])
        far += off
        flagged += r["flag"] != 0
        unflagged += r["flag"] == 0
        far_unflagged += off and r["flag"] == 0
        far_unusable += off and not r["usable"]
    return {
        "rows": n,
        "flagged": flagged / n,
        "far": far,
        "far_caught": far_unusable,
        "far_among_unflagged": far_unflagged / max(unflagged, 1),
    }


def three_ways(paths: list[str], cli_table, model: str | None) -> dict:
    """The same files through `predict(path)` and `predict(Spectrum.read(path))` against the CLI's rows."""
    from specutils import Spectrum

    import specllm
    import specllm.io.specutils_reader  # noqa: F401

    api = specllm.load_model(model)
    cli = {r["file"]: (r["flag"], r["flag_reason"]) for r in cli_table.to_pylist()}
    readable = [p for p in paths if p in cli and cli[p][0] is not None]
    by_path = api.predict(readable)
    spectra = []
    for p in readable:
        spectra.append(Spectrum.read(p, format="LAMOST-LRS"))
    by_spectrum = api.predict(spectra)
    same = sum(
        cli[p]
        == (by_path["flag"][i], by_path["flag_reason"][i])
        == (by_spectrum["flag"][i], by_spectrum["flag_reason"][i])
        for i, p in enumerate(readable)
    )
    return {"files": len(readable), "same_flag_three_ways": int(same)}


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
    extra = {}
    try:
        extra["ways"] = three_ways(nonafg + dr10k, table, args.model)
    except ImportError:
        extra["ways"] = "specutils not installed"
    print("same flag through the CLI, predict(path) and predict(Spectrum):", extra["ways"])
    mgu = []
    for p, m in headers(nonafg + dr10k):
        sub = str(m["subclass"] or "")
        if m["objclass"].upper() != "STAR" or sub.startswith(("M", "dM", "gM", "sdM")):
            mgu.append(p)
    blanked = blank_headers(mgu, os.path.join(args.out, "blanked"))
    table, _ = run(blanked, os.path.join(args.out, "blanked.parquet"), args.model)
    results.append(rates(table, f"M, galaxies, Unknown with CLASS/SUBCLASS blanked ({len(mgu)})"))

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
    extra["dr10test_far_off"] = far_off(table, os.path.join(args.shared, "lamost", "dr10", "labels.csv"))
    print("DR10 test split, A/F/G with catalogue labels:", extra["dr10test_far_off"])

    d = np.load(os.path.join(args.shared, "miles", "miles_984stars_fwhm2.5A.npz"))
    t, g, f = d["teff"], d["logg"], d["feh"]
    known = np.isfinite(t) & np.isfinite(g) & np.isfinite(f)
    far = known & ((t < 4000) | (g < 0.8) | (f < -2.5))  # outside the training labels' range (issue 23)
    inside = known & (t >= 5200) & (t <= 10000) & (g >= 3.5) & (f >= -1)
    sub = os.path.join(args.out, "miles-buckets.npz")
    keep = far | inside
    np.savez(sub, **{k: (d[k][keep] if d[k].ndim and len(d[k]) == len(t) else d[k]) for k in d.files})
    table, _ = run([sub], os.path.join(args.out, "miles.parquet"), args.model)
    ids = table.column("spec_id").to_pylist()
    far_ids = {f"miles-{int(i):04d}" for i in d["miles_id"][far]}
    results.append(rates(table.filter(np.array([i in far_ids for i in ids])), f"MILES outside the range ({far.sum()})"))
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

    cols = ["set", "n", "any", "usable", *[f.keyword for f in FLAGS]]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r[c]) if c in ("set", "n") else f"{100 * r[c]:.1f}%" for c in cols) + " |")
    with open(os.path.join(args.out, "summary.json"), "w") as fh:
        json.dump({"sets": results, **extra}, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
