"""Full-length recipe variants of the shipped model, trained side by side on one lent GPU (issue 22).

    python benchmarks/gpu_sweep.py --prepare gpu-sweep [--qa out/model-qa] [--variants benchmarks/gpu_sweep.json]
    python benchmarks/gpu_sweep.py --run gpu-sweep --out $OUT --deadline 450      # there (torch, transformers, peft,
                                                                                  # pyarrow; gguf from the carried wheel)
    python benchmarks/gpu_sweep.py --collect FILES_AT --into out/sweep             # here: the runs as model folders
    python benchmarks/rank_variants.py out/model-qa-real out/sweep/*               # here: validation figures

On this 2-core CPU one run of the shipped recipe takes 35-60 min, so variants were ranked by single runs and seed
noise was never measured. A device call carries what the runs need and nothing else (64 MiB with the repository):
the embedded base cut to the 8 layers the model reads (`gpu_parity.cut_gguf`: the same predictions as the full GGUF),
the QA examples of the train and synthetic splits (never the test split) packed losslessly (flux x 1000 as int16
differences along the wavelength axis, LZMA; the rest as Parquet), the variants file and the `gguf` wheel.
`--run` rebuilds each variant's QA folder through the shard writer (sealed: `train` verifies it as any other),
starts every variant as its own `specllm train` process on the GPU at once (they are small; each is bound by its
own Python overhead, so they share the device well), stops what is still running at `--deadline` seconds, and packs
the finished runs (model, history, metrics) and the latest checkpoint of each stopped one (to be finished here with
`--resume`) into at most six tar files under --out (the device's limits on what
comes back). Nothing is chosen there: the validation figures are computed here, on the CPU, through the same
`rank_variants.py` as every earlier variant, and the test split is not carried.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

FLUX_SCALE = 1000  # serialize rounds flux to 3 decimals: x 1000 is an exact integer
MAX_TAR_BYTES = 15 * 2**20  # the device returns files of at most 16 MiB
MAX_TARS = 6  # and at most 8 files: the tars, sweep.json and the log


# ---------------------------------------------------------------- the examples, packed and rebuilt


def pack_examples(qa: str, folder: Path) -> dict:
    """The train- and synthetic-split rows of the QA folder `qa`, losslessly: flux.xz (int16 differences of flux x
    1000 along each row), mask.xz (packed bits), rest.parquet (every other column) and manifest.json (the source's
    fields, for the rebuilt folders)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from specllm.shards import arrow_to_vectors, read_manifest, read_table, verified_shard_paths

    table = read_table(verified_shard_paths(qa))
    table = table.filter(pc.invert(pc.equal(table["split"], "test")))
    flux = arrow_to_vectors(table["flux"])
    mask = arrow_to_vectors(table["mask"], bool)
    ints = np.round(flux.astype(np.float64) * FLUX_SCALE).astype(np.int64)
    if not np.array_equal((ints / FLUX_SCALE).astype(np.float32), flux) or np.abs(ints).max() >= 2**15:
        raise SystemExit(f"{qa}: flux is not 3-decimal values in int16 range; cannot pack it losslessly")
    deltas = np.diff(ints, axis=1, prepend=0).astype(np.int16)
    (folder / "flux.xz").write_bytes(lzma.compress(deltas.tobytes(), preset=6))
    (folder / "mask.xz").write_bytes(lzma.compress(np.packbits(mask, axis=1).tobytes()))
    rest = table.drop_columns(["flux", "mask"])
    pq.write_table(rest, folder / "rest.parquet", compression="zstd")
    manifest = read_manifest(qa) or {}
    keep = {k: v for k, v in manifest.items() if k in ("format", "grid_size", "kind", "label_prefix", "labels",
                                                         "patch", "stage", "tokens", "serialize")}  # fmt: skip
    sink = pa.BufferOutputStream()
    pa.ipc.new_stream(sink, table.schema).close()
    (folder / "schema.arrows").write_bytes(sink.getvalue().to_pybytes())
    (folder / "manifest.json").write_text(json.dumps({"fields": keep, "rows": table.num_rows,
                                                      "source": qa}, indent=1) + "\n")  # fmt: skip
    return {"rows": table.num_rows, "splits": dict(zip(*np.unique(table["split"].to_numpy(zero_copy_only=False),
                                                                    return_counts=True)))}  # fmt: skip


def unpack_examples(folder: Path):
    """The table `pack_examples` packed, as it was (same schema, same values)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from specllm.shards import vectors_to_arrow

    info = json.loads((folder / "manifest.json").read_text())
    schema = pa.ipc.open_stream(io.BytesIO((folder / "schema.arrows").read_bytes())).schema
    rest = pq.read_table(folder / "rest.parquet")
    n = info["rows"]
    deltas = np.frombuffer(lzma.decompress((folder / "flux.xz").read_bytes()), dtype=np.int16).reshape(n, -1)
    flux = (np.cumsum(deltas.astype(np.int64), axis=1) / FLUX_SCALE).astype(np.float32)
    width = flux.shape[1]
    mask = np.unpackbits(np.frombuffer(lzma.decompress((folder / "mask.xz").read_bytes()), np.uint8).reshape(n, -1),
                         axis=1, count=width).astype(bool)  # fmt: skip
    columns = {name: rest[name] for name in rest.column_names}
    columns["flux"] = vectors_to_arrow(flux, pa.float32())
    columns["mask"] = vectors_to_arrow(mask, pa.bool_())
    return pa.table([columns[f.name] for f in schema], names=schema.names).cast(schema), info["fields"]


def select(table, data: str):
    """The rows of one variant's data: 'real' (train split), 'mp' (+ the synthetic metal-poor F/G stars, below
    7,000 K), 'a' (+ every synthetic star), 'mp+hotN' (+ the first N synthetic hot stars)."""
    import numpy as np

    split = np.array(table["split"].to_pylist())
    teff = np.array(table["teff"].to_pylist(), dtype=float)
    synthetic = split == "synthetic"
    keep = split == "train"
    if data in ("mp", "a") or data.startswith("mp+hot"):
        keep |= synthetic & (teff < 7000)
    if data == "a":
        keep |= synthetic
    elif data.startswith("mp+hot"):
        hot = np.flatnonzero(synthetic & (teff >= 7000))[: int(data[len("mp+hot") :])]
        keep[hot] = True
    elif data not in ("real", "mp"):
        raise SystemExit(f"unknown data selection {data!r}")
    return table.take(np.flatnonzero(keep))


def write_qa(table, fields: dict, target: Path) -> None:
    """A QA folder as `serialize` leaves one: shards of 512 rows and a sealed manifest."""
    from specllm.shards import seal_shards, write_table

    target.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, table.num_rows, 512)):
        write_table(target / f"part-{k:05d}.parquet", table.slice(start, 512))
    seal_shards(target, {**fields, "counts": {"written": table.num_rows}})


# ---------------------------------------------------------------- here: prepare and collect


def prepare(folder: Path, qa: str, variants: Path) -> dict:
    from gpu_parity import GGUF_WHEEL, cut_gguf

    from specllm.models import embedded_gguf
    from specllm.predict import default_model_dir
    from specllm.runs import ModelSpec

    folder.mkdir(parents=True, exist_ok=True)
    layers = ModelSpec.from_json(default_model_dir() / "spec.json").layers
    cut = ROOT / "gpu-parity" / "base.gguf"  # gpu_parity's cut of the same GGUF, where present
    if cut.exists():
        shutil.copyfile(cut, folder / "base.gguf")
    else:
        cut_gguf(embedded_gguf(), folder / "base.gguf", layers)
    (folder / "examples").mkdir(exist_ok=True)
    info = pack_examples(qa, folder / "examples")
    shutil.copyfile(variants, folder / "variants.json")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder / "wheels"),
                    GGUF_WHEEL], check=True)  # fmt: skip
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {**info, "bytes": size, "variants": len(json.loads(variants.read_text()))}


def collect(files_at: Path, into: Path) -> list[str]:
    """The tars' runs as `into/NAME` (model/, history.json, metrics.json), their spec naming the embedded base (the
    cut GGUF it was trained over holds the same first layers, byte for byte)."""
    from specllm.models import base_fingerprint, resolve_base

    fingerprint = base_fingerprint(resolve_base("embedded", weights=True))
    names = []
    for tar in sorted(files_at.glob("runs-*.tar")):
        with tarfile.open(tar) as fh:
            fh.extractall(into, filter="data")
    for spec_path in sorted(into.glob("*/model/spec.json")):
        spec = json.loads(spec_path.read_text())
        spec.update(base_model="embedded", base_fingerprint=fingerprint)
        spec_path.write_text(json.dumps(spec, indent=1) + "\n")
        names.append(spec_path.parent.parent.name)
    return names


# ---------------------------------------------------------------- there: run


def child_env(threads: int) -> dict:
    """gpu_check's environment for a part's subprocess (this checkout first on the path), with `threads` CPU
    threads per variant."""
    from gpu_check import child_env as checkout_env

    return dict(checkout_env(), OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")


def run(folder: Path, out: Path, deadline: float, threads: int) -> dict:
    t0 = time.time()
    work = Path("/tmp/specllm-sweep")
    shutil.rmtree(work, ignore_errors=True)
    table, fields = unpack_examples(folder / "examples")
    variants = json.loads((folder / "variants.json").read_text())
    from specllm.models import resolve_base

    base = (folder / "base.gguf").resolve()
    resolve_base(str(base))  # converted to safetensors once, before the variants share the cache
    for data in sorted({v["data"] for v in variants}):
        write_qa(select(table, data), fields, work / "qa" / data)
    print(f"{len(variants)} variants, data rebuilt in {time.time() - t0:.0f} s", flush=True)
    procs = {}
    for v in variants:
        cmd = [sys.executable, "-m", "specllm", "train", "--stage", "1", "--recipe", v["recipe"],
               "--data", str(work / "qa" / v["data"]), "--out", str(work / "runs" / v["name"]),
               "--base-model", str(base), "--seed", str(v["seed"]), *v.get("args", [])]  # fmt: skip
        log = open(work / f"{v['name']}.log", "w")
        procs[v["name"]] = (subprocess.Popen(cmd, env=child_env(threads), stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True), time.time(), cmd)  # fmt: skip
    report = {"variants": variants, "runs": {}}
    while any(p.poll() is None for p, _, _ in procs.values()) and time.time() - t0 < deadline:
        time.sleep(5)
    for name, (proc, started, cmd) in procs.items():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            state = "stopped at the deadline"
        else:
            state = "finished" if proc.returncode == 0 else f"exit {proc.returncode}"
        history = work / "runs" / name / "history.json"
        steps = len(json.loads(history.read_text())) if history.exists() else 0
        tail = (work / f"{name}.log").read_text()[-600:] if state != "finished" else ""
        report["runs"][name] = {"state": state, "steps": steps, "wall_s": time.time() - started, "cmd": cmd,
                                "log_tail": tail}  # fmt: skip
        print(f"{name}: {state}, {steps} steps", flush=True)
    _pack(work / "runs", _returned_files(work / "runs", report), out)
    import torch

    report.update(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  torch=torch.__version__, total_s=time.time() - t0)  # fmt: skip
    (out / "sweep.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _returned_files(runs: Path, report: dict) -> list[Path]:
    """What comes back of each run: a finished run's model/, history.json and metrics.json; a run stopped at the
    deadline, its latest checkpoint (to finish here with `specllm train ... --resume`)."""
    files = []
    for name, run in report["runs"].items():
        folder = runs / name
        if run["state"] == "finished":
            files += [p for p in sorted(folder.rglob("*")) if p.is_file() and "checkpoints" not in p.parts]
        elif (folder / "checkpoints" / "latest").exists():
            latest = json.loads((folder / "checkpoints" / "latest").read_text())["checkpoint"]
            files += [folder / "checkpoints" / "latest"]
            files += [p for p in sorted((folder / "checkpoints" / latest).rglob("*")) if p.is_file()]
    return files


def _pack(runs: Path, files: list[Path], out: Path) -> None:
    """`files` (under `runs`) into at most MAX_TARS tars of <= 15 MiB each, file by file (a run may span two)."""
    tars, size, current = 0, 0, None
    for path in files:
        need = path.stat().st_size
        if current is None or size + need > MAX_TAR_BYTES:
            if current is not None:
                current.close()
            if tars == MAX_TARS or need > MAX_TAR_BYTES:
                print(f"{path.relative_to(runs)}: not returned (no room)", flush=True)
                current = None
                continue
            tars += 1
            current, size = tarfile.open(out / f"runs-{tars}.tar", "w"), 0
        current.add(path, arcname=str(path.relative_to(runs)))
        size += need
    if current is not None:
        current.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", metavar="DIR", help="write DIR here: cut base, packed examples, variants, wheel")
    ap.add_argument("--qa", default=str(ROOT / "out" / "model-qa"), help="QA shards with the synthetic split")
    ap.add_argument("--variants", default=str(ROOT / "benchmarks" / "gpu_sweep.json"))
    ap.add_argument("--run", metavar="DIR", help="train DIR's variants on the GPU")
    ap.add_argument("--out", default="gpu-sweep-out")
    ap.add_argument("--deadline", type=float, default=450, help="seconds after which running variants are stopped")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per variant")
    ap.add_argument("--collect", metavar="FILES_AT", help="unpack a run's tars here")
    ap.add_argument("--into", default=str(ROOT / "out" / "sweep"))
    args = ap.parse_args()
    if args.prepare:
        print(json.dumps(prepare(Path(args.prepare), args.qa, Path(args.variants)), indent=1, default=int))
    elif args.run:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        print(json.dumps(run(Path(args.run), Path(args.out), args.deadline, args.threads)["runs"], indent=1))
    elif args.collect:
        print("\n".join(collect(Path(args.collect), Path(args.into))))
    else:
        ap.error("--prepare DIR, --run DIR or --collect FILES_AT")


if __name__ == "__main__":
    main()
