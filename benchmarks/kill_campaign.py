"""kill -9 at seeded random moments of producing stages (issue 24, item 3), on tiny generated inputs.

    python benchmarks/kill_campaign.py [--points 20] [--seed 24] [--stages ingest,serialize,infer-csv,...]
                                       [--out out/kill-campaign]

For each stage: one uninterrupted reference run, then `--points` runs of the same command each killed with SIGKILL
after a delay drawn (seeded) from [0, 1.2 x the reference's wall time]. After each kill:
- the next stage's check must refuse the partial result: `verified_shard_paths` (what every consumer calls) on a
  shard folder, or, for `infer -o`, the final output must be absent (only its `.NAME.partial` may exist) unless
  the run had finished, in which case it must equal the reference;
- the rerun (shard stages: the same command; infer: the same command with --resume) must give the reference's
  content hash (shard stages: the manifest's `content_hash`; infer: the rows, metadata aside).
Prints one JSON object per stage (points, refused, finished before the kill, accepted partial results (must be 0),
identical reruns) and writes them to OUT/results.json.

Stages: ingest, crossmatch (an APOGEE-like table at the spectra's positions), serialize, train (a tiny model, 12
steps, a checkpoint every 2: killed runs are continued with --resume; the next stage's check is what `infer --model`
does, `read_weights`, which verifies the weights against spec.json), infer-<fmt> for csv, ecsv, parquet, fits, vot
(a tiny model trained first, two steps), benchmark (lightgbm and smallcnn, 2 epochs: the report says
`"complete": true` only once every model is in; the rerun must give the same metrics.csv and predictions).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specllm.errors import SpecllmError  # noqa: E402
from specllm.outputs import partial_path, read_rows  # noqa: E402
from specllm.shards import read_manifest, verified_shard_paths  # noqa: E402

CLI = [sys.executable, "-m", "specllm"]


def run(cmd: list[str], timeout: float = 600, env: dict | None = None) -> tuple[int, float, str]:
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    return proc.returncode, time.monotonic() - start, proc.stderr


def killed(cmd: list[str], delay: float, env: dict | None = None) -> bool:
    """Run `cmd`, SIGKILL it after `delay` seconds; True if it had finished before."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
    try:
        proc.wait(timeout=delay)
        return True
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return False


def rows_of(path: Path) -> list[dict]:
    return read_rows(str(path))


def shard_stage(name: str, cmd, out: Path, points: int, rng: random.Random) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    rc, wall, err = run(cmd(out))
    assert rc == 0, err
    reference = read_manifest(out)["content_hash"]
    result = {"stage": name, "points": points, "reference_s": round(wall, 2), "refused": 0, "finished": 0}
    result |= {"accepted_partial": 0, "identical_rerun": 0}
    for _ in range(points):
        shutil.rmtree(out, ignore_errors=True)
        finished = killed(cmd(out), rng.uniform(0, 1.2 * wall))
        try:
            verified_shard_paths(out)
            ok = read_manifest(out).get("content_hash") == reference
            result["finished" if ok else "accepted_partial"] += 1
        except SpecllmError:
            result["refused"] += 1
            assert not finished
        rc, _, err = run(cmd(out))  # the same command again (ingest resumes)
        if rc == 0 and read_manifest(out).get("content_hash") == reference:
            result["identical_rerun"] += 1
    return result


def train_stage(cmd, out: Path, points: int, rng: random.Random) -> dict:
    """kill -9 during `train` (checkpoints every 2 steps); the consumer's check is `read_weights` on OUT/model (what
    infer and --init call: spec.json present and the weights matching its SHA-256); the rerun is --resume. Torch runs
    on one thread here (a precaution; two-thread runs proved as reproducible once the weight files were)."""
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    from specllm.errors import SpecllmError
    from specllm.runs import read_weights

    def weights_hash() -> str | None:
        try:
            read_weights(out / "model")
        except (SpecllmError, OSError):
            return None
        return json.loads((out / "model" / "spec.json").read_text())["weights_sha256"]

    shutil.rmtree(out, ignore_errors=True)
    rc, wall, err = run(cmd, env=env)
    assert rc == 0, err
    reference = weights_hash()
    result = {"stage": "train", "points": points, "reference_s": round(wall, 2), "refused": 0, "finished": 0}
    result |= {"accepted_partial": 0, "identical_rerun": 0, "resumed_from_checkpoint": 0}
    for _ in range(points):
        shutil.rmtree(out, ignore_errors=True)
        killed(cmd, rng.uniform(0, 1.2 * wall), env)
        got = weights_hash()
        if got is None:
            result["refused"] += 1
        else:
            result["finished" if got == reference else "accepted_partial"] += 1
        result["resumed_from_checkpoint"] += (out / "checkpoints" / "latest").exists()
        rc, _, err = run(cmd + ["--resume"], env=env)
        if rc == 0 and weights_hash() == reference:
            result["identical_rerun"] += 1
    return result


def benchmark_stage(cmd, out: Path, points: int, rng: random.Random) -> dict:
    """kill -9 during `benchmark`: a report is whole only where report.json says `"complete": true`; the rerun
    (the same command over what the kill left) must give the reference's metrics.csv and predictions."""
    import pyarrow.parquet as pq

    def content() -> tuple | None:
        try:
            report = json.loads((out / "report.json").read_text())
        except (OSError, ValueError):
            return None
        if report.get("complete") is not True:
            return None
        return (out / "metrics.csv").read_text(), pq.read_table(out / "predictions.parquet").to_pylist()

    shutil.rmtree(out, ignore_errors=True)
    rc, wall, err = run(cmd)
    assert rc == 0, err
    reference = content()
    assert reference is not None
    result = {"stage": "benchmark", "points": points, "reference_s": round(wall, 2), "refused": 0, "finished": 0}
    result |= {"accepted_partial": 0, "identical_rerun": 0}
    for _ in range(points):
        shutil.rmtree(out, ignore_errors=True)
        killed(cmd, rng.uniform(0, 1.2 * wall))
        got = content()
        if got is None:
            result["refused"] += 1
        else:
            result["finished" if got == reference else "accepted_partial"] += 1
        rc, _, err = run(cmd)
        if rc == 0 and content() == reference:
            result["identical_rerun"] += 1
    return result


def apogee_like(path: Path, rows: list[dict]) -> Path:
    """An APOGEE allStar-like CSV with one star at each spectrum's position (labels offset from the LAMOST ones)."""
    lines = ["APOGEE_ID,RA,DEC,TEFF,LOGG,FE_H,FE_H_FLAG,ASPCAPFLAG,MG_FE,MG_FE_FLAG"]
    for i, r in enumerate(rows):
        lines.append(
            f"2M{i:08d},{r['ra']},{r['dec']},{float(r['teff']) + 50},{float(r['logg']) - 0.1},{r['feh']},0,0,0.1,0"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def infer_stage(fmt: str, inputs: Path, model: Path, work: Path, points: int, rng: random.Random) -> dict:
    out = work / f"o.{fmt}"
    base = [*CLI, "infer", str(inputs), "--model", str(model), "-q", "--batch-size", "2", "-o", str(out)]

    def clear():
        for p in work.glob(f"*o.{fmt}*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    clear()
    rc, wall, err = run(base)
    assert rc == 0, err
    reference = rows_of(out)
    result = {"stage": f"infer-{fmt}", "points": points, "reference_s": round(wall, 2), "refused": 0, "finished": 0}
    result |= {"accepted_partial": 0, "identical_rerun": 0}
    for _ in range(points):
        clear()
        killed(base, rng.uniform(0, 1.2 * wall))
        if out.exists():  # a final output is only ever the whole one
            result["finished" if rows_of(out) == reference else "accepted_partial"] += 1
        else:
            result["refused"] += 1
        resume = ["--resume"] if Path(partial_path(str(out))).exists() or out.exists() else []
        rc, _, err = run(base + resume)
        if rc == 0 and rows_of(out) == reference:
            result["identical_rerun"] += 1
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--seed", type=int, default=24)
    ap.add_argument(
        "--stages",
        default="ingest,crossmatch,serialize,train,infer-csv,infer-ecsv,infer-parquet,infer-fits,infer-vot,benchmark",
    )
    ap.add_argument("--out", default="out/kill-campaign")
    args = ap.parse_args()
    from tests.fitsfactory import CATALOG_COLUMNS, make_dataset, write_catalog

    work = ROOT / args.out
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = make_dataset(work / "fits", 12, layouts=("coadd", "image"))
    catalog = write_catalog(work / "labels.csv", rows, CATALOG_COLUMNS)
    rng = random.Random(args.seed)
    stages = args.stages.split(",")
    results = []

    def ingest_cmd(out):
        return [*CLI, "ingest", str(work / "fits"), "--catalog", str(catalog), "--out", str(out), "--shard-size", "2"]

    shards = work / "shards"
    if "ingest" in stages:
        results.append(shard_stage("ingest", ingest_cmd, work / "ingest-k", args.points, rng))
    assert run(ingest_cmd(shards))[0] == 0

    def serialize_cmd(out):
        return [*CLI, "serialize", str(shards), "--stage", "1", "--format", "patch", "--out", str(out),
                "--no-count-tokens"]  # fmt: skip

    if "crossmatch" in stages:
        apogee = apogee_like(work / "apogee.csv", rows)

        def crossmatch_cmd(out):
            return [*CLI, "crossmatch", str(shards), "--apogee", str(apogee), "--out", str(out)]

        results.append(shard_stage("crossmatch", crossmatch_cmd, work / "xm-k", args.points, rng))
    if "serialize" in stages:
        results.append(shard_stage("serialize", serialize_cmd, work / "qa-k", args.points, rng))
    infer_fmts = [s.split("-", 1)[1] for s in stages if s.startswith("infer-")]
    if infer_fmts or "train" in stages:
        from specllm.config import GridConfig
        from specllm.train import run_train
        from tests.llmfactory import tiny_llama_dir, tiny_train_options, write_qa

        tiny = tiny_llama_dir(work)
        data = write_qa(work / "qa-tiny", "patch", n=8, grid=GridConfig().size, test_every=8)
    if "train" in stages:
        train_cmd = [*CLI, "train", "--stage", "1", "--data", str(data), "--out", str(work / "train-k"),
                     "--base-model", str(tiny), "--lora-r", "4", "--lora-alpha", "8", "--lr", "0.01", "--epochs", "40",
                     "--batch-size", "4", "--no-bf16", "--no-gradient-checkpointing", "--max-steps", "12",
                     "--save-every", "2", "--no-validation", "--quantize", "none"]  # fmt: skip
        results.append(train_stage(train_cmd, work / "train-k", args.points, rng))
    if infer_fmts:
        run_train(tiny_train_options(data, work / "run", tiny))
        for fmt in infer_fmts:
            results.append(infer_stage(fmt, work / "fits", work / "run", work, args.points, rng))
    if "benchmark" in stages:
        bench_cmd = [*CLI, "benchmark", str(shards), "--out", str(work / "bench-k"), "--models", "lightgbm,smallcnn",
                     "--quick", "--max-epochs", "2", "--no-save-models"]  # fmt: skip
        results.append(benchmark_stage(bench_cmd, work / "bench-k", args.points, rng))
    for r in results:
        print(json.dumps(r))
    (work / "results.json").write_text(json.dumps({"seed": args.seed, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
