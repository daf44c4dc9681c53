"""Benchmark `specllm ingest` through the real command line on the shared LAMOST DR10 sample.

    python benchmarks/bench_ingest.py [--shared ../shared/data] [--workers 2] [--subsets 400,1000]

Runs, each a fresh `python -m specllm.cli ingest ... --workers N` process (the console script's code path):
  1 file (start-up cost: interpreter, imports, worker pool), the first 400 and 1,000 files (--subsets) and all
  1,650 files with --workers N, and all files with --workers 1 for comparison. (With the default 512 spectra per
  shard, 400 files fill less than one shard; 1,000 and 1,650 files hold the same two shards' worth in memory.)
For each: wall-clock seconds including process start, spectra per second on that wall clock, the rate with the
1-file run's time subtracted (the steady ingest rate), CPU seconds, and peak RSS of the largest process of the run
(main or worker; from getrusage of the waited-for process tree), which must not grow with the number of files.
Prints a Markdown table on stdout; takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(cmd: list[str]) -> dict:
    """Run `cmd` in a fresh intermediary so getrusage(RUSAGE_CHILDREN) covers exactly its process tree."""
    probe = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
        "wall = time.perf_counter() - t\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "summary = [l for l in rc.stderr.splitlines() if l.startswith('ingest: read')]\n"
        "print(json.dumps({'rc': rc.returncode, 'wall': wall, 'cpu': u.ru_utime + u.ru_stime,\n"
        "                  'maxrss_mb': u.ru_maxrss / 1024, 'summary': summary[-1] if summary else rc.stderr[-500:]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def subset_dir(spectra: Path, n: int, where: Path) -> Path:
    """A directory of symlinks to the first n files (sorted), so the run reads them as a directory input."""
    where.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(spectra))[:n]:
        (where / name).symlink_to(spectra / name)
    return where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(ROOT / ".." / "shared" / "data"), help="the shared data folder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--subsets", default="400,1000", help="comma-separated file counts")
    args = parser.parse_args()

    dr10 = Path(args.shared).resolve() / "lamost" / "dr10"
    spectra, labels = dr10 / "spectra", dr10 / "labels.csv"
    if not spectra.is_dir():
        print(f"bench_ingest: {spectra} not found", file=sys.stderr)
        return 2
    n_all = len(os.listdir(spectra))
    cli = [sys.executable, "-m", "specllm.cli", "ingest"]
    env_path = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = env_path

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp = Path(tmp)
        subsets = [int(n) for n in args.subsets.split(",") if n.strip()]
        runs = [("1 file (start-up)", subset_dir(spectra, 1, tmp / "in-1"), 1, args.workers)]
        runs += [(f"{n} files", subset_dir(spectra, n, tmp / f"in-{n}"), n, args.workers) for n in subsets]
        runs += [(f"{n_all} files", spectra, n_all, args.workers), (f"{n_all} files", spectra, n_all, 1)]
        startup = None
        for k, (label, source, n, workers) in enumerate(runs):
            print(f"bench_ingest: {label}, --workers {workers} ...", file=sys.stderr)
            cmd = [
                *cli,
                str(source),
                "--catalog",
                str(labels),
                "--out",
                str(tmp / f"out-{k}"),
                "--workers",
                str(workers),
            ]
            m = measure(cmd)
            if m["rc"] != 0:
                print(f"bench_ingest: run failed: {m['summary']}", file=sys.stderr)
                return 1
            if startup is None:
                startup = m["wall"]
            steady = n / (m["wall"] - startup) if n > 1 and m["wall"] > startup else float("nan")
            rows.append((label, workers, m["wall"], n / m["wall"], steady, m["cpu"], m["maxrss_mb"], m["summary"]))

    print(f"<!-- {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average at the end {os.getloadavg()[0]:.1f} -->")  # fmt: skip
    print(
        "| run | workers | wall s (incl. start) | spectra/s (wall) | spectra/s (start-up subtracted) | CPU s | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, workers, wall, rate, steady, cpu, rss, _ in rows:
        rates = f"{rate:.0f} | {steady:.0f}" if steady == steady else "- | -"  # the 1-file run has no rate
        print(f"| {label} | {workers} | {wall:.2f} | {rates} | {cpu:.1f} | {rss:.0f} |")
    print(f"\n{rows[-2][-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
