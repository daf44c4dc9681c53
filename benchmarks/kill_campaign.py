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

Stages: ingest, serialize, infer-<fmt> for csv, ecsv, parquet, fits, vot (a tiny model trained first, two steps).
Not covered here: crossmatch, train checkpoints, benchmark.
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


def run(cmd: list[str], timeout: float = 600) -> tuple[int, float, str]:
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return proc.returncode, time.monotonic() - start, proc.stderr


def killed(cmd: list[str], delay: float) -> bool:
    """Run `cmd`, SIGKILL it after `delay` seconds; True if it had finished before."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
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
    ap.add_argument("--stages", default="ingest,serialize,infer-csv,infer-ecsv,infer-parquet,infer-fits,infer-vot")
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

    if "serialize" in stages:
        results.append(shard_stage("serialize", serialize_cmd, work / "qa-k", args.points, rng))
    infer_fmts = [s.split("-", 1)[1] for s in stages if s.startswith("infer-")]
    if infer_fmts:
        from specllm.config import GridConfig
        from specllm.train import run_train
        from tests.llmfactory import tiny_llama_dir, tiny_train_options, write_qa

        tiny = tiny_llama_dir(work)
        data = write_qa(work / "qa-tiny", "patch", n=8, grid=GridConfig().size, test_every=8)
        run_train(tiny_train_options(data, work / "run", tiny))
        for fmt in infer_fmts:
            results.append(infer_stage(fmt, work / "fits", work / "run", work, args.points, rng))
    for r in results:
        print(json.dumps(r))
    (work / "results.json").write_text(json.dumps({"seed": args.seed, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
