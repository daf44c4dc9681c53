"""Benchmark `--engine local` against `--engine ray` for `ingest` and `infer` over N spectra, and the per-stage rates
that size a cluster.

    python benchmarks/bench_engines.py [--shared ../shared/data] [--work /tmp/bench-engines]
        [--ingest-sizes 10000,100000] [--infer-sizes 2000,10000] [--engines local,ray] [--ray-cpus 2] [--workers 2]
        [--stages] [--json results.json]

Inputs: the 1,650 real DR10 files repeated under new names until there are N, each copy with its own OBSID (the
header card rewritten, the file gzipped again at level 1), so that no spectrum is a duplicate and every one is
read, cleaned, labelled and written; made once under --work (about 60 KB per file) and kept for later runs.

Each run is a fresh `python -m specllm ...` process (infer writes CSV to stdout, discarded). Every 0.5 s the run's
process tree is sampled with psutil: the driver (the specllm process), the workers (local: the pool's processes;
Ray: the `ray::` worker and actor processes) and, for Ray, its own services (GCS, raylet, ...). Reported: wall
seconds (process start included), spectra/s, peak RSS of the driver, of the largest worker and of all workers
together, of Ray's services, and the 1-minute load average before the run (the machine is shared). RSS counts the
shared-memory pages of Ray's object store that a process has touched.

--stages measures the two stages a cluster is sized by, in this process: reading+cleaning (spectra/s on one CPU,
`labelling.unit_items`) and the model (spectra/s, `labelling.label_rows` on cleaned spectra, this machine's torch
threads). Prints a Markdown table on stdout and, with --json, writes every number.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RAY_SERVICES = ("gcs_server", "raylet", "dashboard", "log_monitor", "runtime_env", "monitor.py", "agent")


def make_inputs(spectra: Path, n: int, where: Path) -> Path:
    """`where/N` holding n files: the DR10 files in turn, each copy with OBSID 3000000000 + its index."""
    folder = where / f"n{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    originals = sorted(spectra.glob("*.fits.gz"))
    raw = [gzip.decompress(p.read_bytes()) for p in originals]
    for i in range(n):
        data = raw[i % len(raw)]
        at = data.index(b"OBSID   =")
        card = b"OBSID   = " + f"{3_000_000_000 + i:>20d}".encode() + data[at + 30 : at + 80]
        (folder / f"copy{i:07d}-{originals[i % len(raw)].name}").write_bytes(
            gzip.compress(data[:at] + card + data[at + 80 :], compresslevel=1)
        )
    done.touch()
    return folder


def classify(proc: psutil.Process, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except psutil.Error:
        return "gone"
    if name.startswith("ray::") or "default_worker.py" in cmd:
        return "worker"
    if any(s in cmd or s in name for s in RAY_SERVICES):
        return "ray services"
    return "worker"  # the local engine's pool processes


def run_sampled(cmd: list[str]) -> dict:
    """Run `cmd`, sampling its process tree's RSS every 0.5 s: peaks of the driver, of one worker, of all workers,
    of Ray's services."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = {"driver": 0, "worker_max": 0, "workers_sum": 0, "ray_services": 0}
    stop = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            sums = {"driver": 0, "worker": 0, "ray services": 0, "gone": 0}
            for p in tree:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                kind = classify(p, proc.pid)
                sums[kind] += rss
                if kind == "worker":
                    peaks["worker_max"] = max(peaks["worker_max"], rss)
            peaks["driver"] = max(peaks["driver"], sums["driver"])
            peaks["workers_sum"] = max(peaks["workers_sum"], sums["worker"])
            peaks["ray_services"] = max(peaks["ray_services"], sums["ray services"])
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    thread.join()
    summary = [line for line in err.splitlines() if line.startswith(("ingest: read", "infer: "))]
    hashes = [line.split("content hash ")[-1] for line in err.splitlines() if "content hash " in line]
    mb = {k: round(v / 2**20) for k, v in peaks.items()}
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "load_1min": round(load, 2), "peak_rss_mb": mb,
            "summary": summary[-1] if summary else err[-800:], "content_hash": hashes[-1] if hashes else None}  # fmt: skip


def engine_args(engine: str, args) -> list[str]:
    if engine == "ray":
        return ["--engine", "ray", "--ray-cpus", str(args.ray_cpus)]
    return []


def stage_rates(spectra: Path, n: int = 300) -> dict:
    """Reading+cleaning spectra/s on one CPU, and the shipped model's spectra/s on this machine."""
    import torch

    from specllm.config import CleanConfig, GridConfig, InferConfig
    from specllm.device import pick_device
    from specllm.labelling import label_rows, unit_items
    from specllm.predict import default_model_dir, load_for_inference

    files = sorted(spectra.glob("*.fits.gz"))[:n]
    t = time.perf_counter()
    cpu0 = time.process_time()
    items = [it for f in files for it in unit_items(("file", str(f), ""), GridConfig(), CleanConfig())]
    read_wall, read_cpu = time.perf_counter() - t, time.process_time() - cpu0
    device = pick_device()
    models = load_for_inference(default_model_dir(), device)
    good = [it for it in items if it.status == "ok"][:160]
    list(label_rows(good[:16], models, device, InferConfig()))  # warm-up
    t = time.perf_counter()
    list(label_rows(good, models, device, InferConfig()))
    model_wall = time.perf_counter() - t
    return {
        "read_clean_per_cpu_s": round(len(files) / read_cpu, 1),
        "read_clean_wall_s": round(len(files) / read_wall, 1),
        "model_per_s": round(len(good) / model_wall, 1),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_1min": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(ROOT / ".." / "shared" / "data"))
    parser.add_argument("--work", default="/tmp/bench-engines", help="inputs (kept) and outputs (removed) go here")
    parser.add_argument("--ingest-sizes", default="10000,100000")
    parser.add_argument("--infer-sizes", default="2000,10000")
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--workers", type=int, default=2, help="ingest --workers of the local engine")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--stages", action="store_true", help="also measure the per-stage rates")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    spectra = Path(args.shared).resolve() / "lamost" / "dr10" / "spectra"
    work = Path(args.work)
    cli = [sys.executable, "-m", "specllm"]
    results = []
    jobs = [("ingest", int(n)) for n in args.ingest_sizes.split(",") if n]
    jobs += [("infer", int(n)) for n in args.infer_sizes.split(",") if n]
    for command, n in jobs:
        inputs = make_inputs(spectra, n, work / "inputs")
        for engine in args.engines.split(","):
            out = work / f"out-{command}-{engine}-{n}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            if command == "ingest":
                cmd = [*cli, "ingest", str(inputs), "-o", str(out), "--workers", str(args.workers)]
            else:
                cmd = [*cli, "infer", str(inputs)]  # CSV on stdout (discarded): streamed, row by row
            res = run_sampled(cmd + engine_args(engine, args))
            res.update(command=command, engine=engine, n=n, spectra_per_s=round(n / res["wall_s"], 1))
            results.append(res)
            print(json.dumps(res), file=sys.stderr, flush=True)
            subprocess.run(["rm", "-rf", str(out)], check=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"runs": results}, indent=1))
    stages = stage_rates(spectra) if args.stages else None
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": results, "stages": stages}, indent=1))
    print(
        "| command | engine | N | wall s | spectra/s | driver MB | worker max MB | workers MB | Ray services MB | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m = r["peak_rss_mb"]
        print(f"| {r['command']} | {r['engine']} | {r['n']} | {r['wall_s']} | {r['spectra_per_s']} | {m['driver']} | "
              f"{m['worker_max']} | {m['workers_sum']} | {m['ray_services']} | {r['load_1min']} |")  # fmt: skip
    if stages:
        print(f"\nstages: {json.dumps(stages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
