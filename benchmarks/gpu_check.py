"""One-command check of the paper's training path on one GPU (issue 14), or at toy sizes on the CPU (`--smoke`).

    python benchmarks/gpu_check.py --out gpu-check.json [--smoke] [--shared ../shared/data]
    make gpu-check [SMOKE=1]

Writes a JSON of samples/s, tokens/s and peak GPU memory for
(a) the shipped recipe: patch format, the embedded SmolLM2 cut to 8 layers, the Makefile's MODEL_RECIPE (in-process);
(b) the paper's recipe: a LLaMA-3.1-8B-shaped model with random weights (its config written in code, saved once to a
    scratch directory), the Llama-3 tokenizer, real DR10 spectra in the paper's text format (~24,600 tokens each),
    QLoRA (nf4) r=64 alpha=128 dropout 0.1, bf16, gradient checkpointing, ZeRO-3, through the deepspeed launcher;
(c) `infer` throughput of the shipped model over real DR10 files.
`--smoke` runs the same code on the CPU with a 2-layer SmolLM2, a 1-layer Llama-3-vocabulary model and a few
spectra (about 1-2 minutes); it is what `make test` runs. Without ../shared/data it says so and exits 0 in smoke mode.
Numbers are throughput over a few optimizer steps after loading (the first step included), not a full epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Sizes: (GPU, smoke)
SIZES = {
    "spectra": (96, 6),  # DR10 spectra ingested for (a) and (b)
    "shipped_steps": (40, 2),
    "shipped_layers": (8, 2),
    "paper_steps": (6, 1),
    "paper_test": (2, 1),  # test-split examples kept for (b)'s closing evaluation (24,600-token prefills)
    "infer_spectra": (512, 4),
}
SHIPPED_RECIPE = dict(lr=5e-4, batch_size=8, grad_accum=1, gradient_checkpointing=False, bf16=True)


def size(name: str, smoke: bool) -> int:
    return SIZES[name][1 if smoke else 0]


def peak_reset():
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def prepare(work: Path, shared: Path, smoke: bool) -> dict:
    from specllm.config import IngestConfig
    from specllm.ingest import run_ingest
    from specllm.serialize import run_serialize

    dr10 = shared / "lamost" / "dr10"
    files = [str(p) for p in sorted((dr10 / "spectra").glob("*.fits.gz"))[: size("spectra", smoke)]]
    run_ingest(files, str(work / "shards"), str(dr10 / "labels.csv"), IngestConfig())
    patch = run_serialize(str(work / "shards"), 1, "patch", str(work / "qa-patch"))
    paper = run_serialize(str(work / "shards"), 1, "paper", str(work / "qa-paper-all"), tokenizer_from="llama3")
    _keep_test(work / "qa-paper-all", work / "qa-paper", size("paper_test", smoke))
    return {"patch_tokens": patch.tokens["mean"], "paper_tokens": paper.tokens["mean"], "files": files}


def _keep_test(source: Path, target: Path, n_test: int) -> None:
    """A copy of QA shards with every train example and only the first n_test test examples."""
    import numpy as np
    import pyarrow.compute as pc

    from specllm.shards import read_table, write_table

    table = read_table(str(source))
    test = np.flatnonzero(np.asarray(pc.equal(table["split"], "test")))
    drop = set(test[n_test:].tolist())
    keep = [i for i in range(table.num_rows) if i not in drop]
    target.mkdir(parents=True, exist_ok=True)
    write_table(target / "part-00000.parquet", table.take(keep))


def shipped_train(work: Path, data: dict, smoke: bool) -> dict:
    from specllm.config import LoraConfig, TrainConfig
    from specllm.train import TrainOptions, run_train

    steps = size("shipped_steps", smoke)
    opts = TrainOptions(
        data=str(work / "qa-patch"), out=str(work / "run-shipped"), base_model="embedded",
        layers=size("shipped_layers", smoke), head_lr_mult=3.0, max_steps=steps,
        recipe=TrainConfig(epochs=100, save_every=10**6, **SHIPPED_RECIPE), lora=LoraConfig(r=16, alpha=32),
    )  # fmt: skip
    peak_reset()
    manifest = run_train(opts)["spec"].manifest
    rate = manifest["samples_per_second"]
    return {
        "recipe": "patch, embedded SmolLM2-135M, LoRA r=16 alpha=32, batch 8, bf16, no gradient checkpointing",
        "layers": opts.layers, "steps": steps, "samples_per_s": rate, "tokens_per_s": rate * data["patch_tokens"],
        "tokens_per_example": data["patch_tokens"], "peak_gpu_memory_gb": peak_gb(),
    }  # fmt: skip


def llama_base(work: Path, smoke: bool) -> Path:
    """The LLaMA-3.1-8B-shaped model with random weights (bf16 safetensors) and the Llama-3 tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    from specllm.models import llama3_tokenizer_files, llama31_8b_config

    target = work / ("llama3-toy" if smoke else "llama31-8b-random")
    overrides = (
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
        if smoke
        else {}
    )
    config = llama31_8b_config(**overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target, safe_serialization=True)
    del model
    llama3_tokenizer_files(target)
    return target


def paper_train(work: Path, data: dict, smoke: bool) -> dict:
    import torch

    base = llama_base(work, smoke)
    steps = size("paper_steps", smoke)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    cmd = [
        str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "1", "--module", "specllm", "train",
        "--stage", "1", "--data", str(work / "qa-paper"), "--out", str(work / "run-paper"), "--base-model", str(base),
        "--quantize", "nf4", "--lora-r", "64", "--lora-alpha", "128", "--lora-dropout", "0.1", "--bf16",
        "--gradient-checkpointing", "--batch-size", "1", "--grad-accum", "1", "--lr", "1e-4", "--epochs", "100",
        "--max-steps", str(steps), "--deepspeed", str(ROOT / "specllm" / "recipes" / "zero3.json"),
        "--no-verify",  # qa-paper is this script's filtered copy of verified shards, without a manifest of its own
    ]  # fmt: skip
    t = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"gpu-check: the paper recipe failed (exit {proc.returncode}): {' '.join(cmd)}")
    manifest = json.loads((work / "run-paper" / "model" / "spec.json").read_text())["manifest"]
    rate = manifest["samples_per_second"]
    return {
        "recipe": "paper text, LLaMA-3.1-8B-shaped random weights, Llama-3 tokenizer, QLoRA nf4 r=64 alpha=128 "
        "dropout 0.1, bf16, gradient checkpointing, ZeRO-3, deepspeed launcher, batch 1",
        "model": "toy (1 layer, width 64, Llama-3 vocabulary)" if smoke else "LLaMA-3.1-8B shape (32 layers, 4096)",
        "steps": steps, "samples_per_s": rate, "tokens_per_s": rate * data["paper_tokens"],
        "tokens_per_example": data["paper_tokens"], "peak_gpu_memory_gb": manifest.get("peak_gpu_memory_gb"),
        "wall_s_with_launch_and_load": wall,
        "epoch_hours_1e5_spectra": 1e5 / rate / 3600, "epoch_hours_1.5e6_spectra": 1.5e6 / rate / 3600,
    }  # fmt: skip


def infer_rate(work: Path, shared: Path, smoke: bool) -> dict:
    from specllm.config import InferConfig
    from specllm.infer import run_infer

    files = [str(p) for p in sorted((shared / "lamost" / "dr10" / "spectra").glob("*.fits.gz"))]
    files = files[: size("infer_spectra", smoke)]
    run_infer(files[:1], None, str(work / "warm.csv"), InferConfig())  # model load and conversion outside the timing
    peak_reset()
    t = time.time()
    failed, total = run_infer(files, None, str(work / "labels.csv"), InferConfig())
    wall = time.time() - t
    return {"spectra": total, "failed": failed, "spectra_per_s": total / wall, "wall_s_with_load": wall,
            "peak_gpu_memory_gb": peak_gb()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.json")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (what `make test` runs)")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    import torch

    shared = Path(args.shared)
    if not (shared / "lamost" / "dr10").is_dir():
        message = f"gpu-check: no DR10 sample under {shared}"
        if args.smoke:
            print(message + "; smoke check skipped", file=sys.stderr)
            return
        raise SystemExit(message)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu-check: no CUDA device (run with --smoke for the CPU toy check)")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="specllm-gpu-check-"))
    try:
        data = prepare(work, shared, args.smoke)
        report = {"device": device, "smoke": args.smoke, "torch": torch.__version__}
        report["shipped_train"] = shipped_train(work, data, args.smoke)
        report["paper_train"] = paper_train(work, data, args.smoke)
        report["infer"] = infer_rate(work, shared, args.smoke)
        report["total_s"] = time.time() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from specllm.shards import atomic_write_json

    atomic_write_json(Path(args.out), report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
