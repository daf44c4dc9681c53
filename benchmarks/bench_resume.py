"""`infer -o out.parquet` killed with kill -9 after half of N spectra and rerun with `--resume`, against one
uninterrupted run of the same command (the shipped model on the first N DR10 files).

    python benchmarks/bench_resume.py [--n 1000] [--out out/bench-resume]

Prints one JSON object: rows of each run, rows kept at the kill, whether every input appears exactly once and
whether the resumed table equals the uninterrupted one row for row, and the wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "lamost" / "dr10" / "spectra"
sys.path.insert(0, str(ROOT))

from specllm.outputs import partial_path, read_partial_batches  # noqa: E402


def infer(files_list: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "specllm", "infer", "--from-file", str(files_list), "-o", str(out), "-q", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", default="out/bench-resume")
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    files = [str(p) for p in sorted(SHARED.glob("*.fits.gz"))[: args.n]]
    listing = out / "files.txt"
    listing.write_text("\n".join(files) + "\n")
    full, cut = out / "full.parquet", out / "resumed.parquet"
    for p in (full, cut):
        if p.exists():
            p.unlink()
    t = time.time()
    proc = infer(listing, full)
    assert proc.wait() == 0, proc.stderr.read()
    straight_s = time.time() - t

    t = time.time()
    proc = infer(listing, cut)
    partial = partial_path(str(cut))
    kept = 0
    while proc.poll() is None:
        time.sleep(0.5)
        if os.path.isdir(partial):
            kept = read_partial_batches(partial).num_rows
            if kept >= len(files) // 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait()
    killed_s = time.time() - t
    kept = read_partial_batches(partial).num_rows
    t = time.time()
    proc = infer(listing, cut, "--resume")
    assert proc.wait() == 0, proc.stderr.read()
    resume_s = time.time() - t
    a, b = pq.read_table(full).to_pylist(), pq.read_table(cut).to_pylist()
    result = {
        "n": len(files),
        "uninterrupted_rows": len(a),
        "rows_kept_at_kill": kept,
        "resumed_rows": len(b),
        "each_input_once": sorted(r["file"] for r in b) == sorted(files),
        "equal_to_uninterrupted": a == b,
        "rows_differing": sum(x != y for x, y in zip(a, b)),
        "uninterrupted_s": round(straight_s, 1),
        "killed_run_s": round(killed_s, 1),
        "resumed_run_s": round(resume_s, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
